"""Greedy forward selection: vectorised candidate scoring against the per-candidate loop.

Run: python benchmarks/bench_greedy.py [--m 2000] [--width 128] [--size 12] [--repeats 2]

Both versions select from the same cached activations of a random two-layer ReLU network
on random MNIST-shaped inputs, side by side in this process; the script checks that they
pick the same neurons and prints the speedup of the vectorised version as a ratio of the
best of ``--repeats`` timings (absolute times depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prunetime.greedy import build_two_layer, greedy_select, kappa_of, prepare_inputs  # noqa: E402


def best_time(fn, repeats: int) -> tuple[float, object]:
    """Smallest wall time of ``repeats`` calls (the least disturbed by other processes)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, default=2000, help="training images")
    p.add_argument("--width", type=int, default=128, help="hidden neurons N (candidates)")
    p.add_argument("--size", type=int, default=12, help="neurons to select")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    net = build_two_layer(784, a.width, 10, "mean_field", 1.0, g)
    x = prepare_inputs(torch.rand(a.m, 784, generator=g))
    y = torch.randint(0, 10, (a.m,), generator=g)
    with torch.no_grad():
        hidden, out_w, kappa = net.hidden(x), net.a.detach(), kappa_of(net)
    print(f"m = {a.m}, N = {a.width} candidates, n = {a.size} steps, {a.threads} thread(s)")
    print(f"{'loss':<14} {'variant':<20} {'naive s':>9} {'vector s':>9} {'speedup':>8}")
    for loss in ("mse", "cross_entropy"):
        for repl in (True, False):
            kw = {"loss": loss, "replacement": repl}
            with torch.no_grad():
                t_fast, fast = best_time(
                    lambda kw=kw: greedy_select(hidden, out_w, kappa, y, a.size, **kw), a.repeats
                )
                t_slow, slow = best_time(
                    lambda kw=kw: greedy_select(hidden, out_w, kappa, y, a.size, naive=True, **kw),
                    a.repeats,
                )
            same = "same" if fast.indices == slow.indices else "DIFFERENT"
            variant = "with replacement" if repl else "without replacement"
            print(
                f"{loss:<14} {variant:<20} {t_slow:9.3f} {t_fast:9.3f} {t_slow / t_fast:7.1f}x"
                f"  ({same} selection)"
            )


if __name__ == "__main__":
    main()
