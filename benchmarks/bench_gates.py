"""Structure discovery: per-epoch wall time as gated training removes structures.

Run: python benchmarks/bench_gates.py [--n 8192] [--epochs 6] [--lam 8] [--repeats 1]

One gated residual MLP (unit and block gates, large lambda) and the same network without
gates train side by side in this process on the same synthetic MNIST-shaped data with
nonlinear labels. For each the script prints the wall time of every epoch and the ratio of
the last epoch to the first (absolute times depend on the machine and its load; the dense
run shows what the ratio is without removal).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prunetime.data import Split  # noqa: E402
from prunetime.gates import ResMLP  # noqa: E402
from prunetime.gates_study import train_gated  # noqa: E402


def synthetic(n: int, seed: int) -> Split:
    """Images in [0, 1] whose labels come from a fixed random two-layer ReLU teacher."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    t = torch.Generator().manual_seed(1234)
    w1, w2 = torch.randn(784, 64, generator=t), torch.randn(64, 10, generator=t)
    y = (torch.relu(x.reshape(n, -1) @ w1 - 10.0) @ w2).argmax(1)
    return Split(x, y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lam", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    train, evalset = synthetic(a.n, 0), synthetic(512, 1)
    cfg = {
        "gates": {
            "train": {"optimizer": "adam", "lr": 0.002, "momentum": 0.9, "weight_decay": 0.0,
                      "batch_size": 128, "epochs": a.epochs},
            "complexity": {"flops_weight": 0.5, "layer_weight": 0.5},
            "gates": {"estimator": "ste", "theta_init": 1.0, "theta_lr": 0.5,
                      "threshold": 0.05, "patience": 2, "check_every": 10},
        }
    }  # fmt: skip
    rows = {}
    for variant in ("combined", "dense"):
        torch.manual_seed(0)
        model = ResMLP((1, 28, 28), width=64, hidden=256, blocks=4)
        lam = a.lam if variant != "dense" else 0.0
        hist = train_gated(
            model, train, evalset, cfg, variant, lam, torch.Generator().manual_seed(0)
        )
        rows[variant] = hist["epochs"]
    print(f"full network: {hist['flops_full']:.0f} FLOPs per sample")
    print(f"{'epoch':>5}  {'gated s':>8} {'gated FLOPs':>12}  {'dense s':>8}")
    for g, d in zip(rows["combined"], rows["dense"], strict=True):
        print(f"{g['epoch']:>5}  {g['wall_s']:8.3f} {g['flops']:12d}  {d['wall_s']:8.3f}")
    for v, ep in rows.items():
        print(f"{v:>8}: last/first epoch time {ep[-1]['wall_s'] / ep[0]['wall_s']:.2f}")


if __name__ == "__main__":
    main()
