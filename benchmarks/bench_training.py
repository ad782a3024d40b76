"""Training throughput: prunetime's trainer against the usual PyTorch recipe and the matmul ceiling.

Run: python benchmarks/bench_training.py [--steps 300] [--threads 1] [--mirror DIR]

Side by side in this process, for LeNet-300-100 and LeNet-5 at batch 128 with Adam:
- prunetime: the prepared split as one in-memory float tensor, index batches from a seeded
  permutation, ``prunetime.training.train_step`` with its optimizer;
- reference: ``torchvision.datasets.MNIST`` with ``ToTensor()`` + ``Normalize`` through a
  ``DataLoader(batch_size=128, shuffle=True)`` and ``torch.optim.Adam``, the usual recipe;
- ceiling: this machine's fp32 GFLOP/s on a large square matmul (same thread count), and the
  model's training FLOPs per sample counted by ``torch.utils.flop_counter.FlopCounterMode``;
- kernel floor: the time per step of the step's own matmul/convolution kernels and its fused
  Adam update alone (torch.profiler's self CPU time, same step), and the share of the ceiling
  a trainer would reach if everything else in the step (activations, loss, bias gradients,
  the batch gather, every op's dispatch) cost nothing: the bound these kernels put on it.
Prints samples/s, the speedup over the recipe, the share of the ceiling reached and that bound.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import add_mirror_arg  # noqa: E402  (puts the project's src on sys.path)
from torch.utils.flop_counter import FlopCounterMode

from prunetime.data import Split, load_prepared, prepare_dataset  # noqa: E402
from prunetime.models import build_model  # noqa: E402
from prunetime.training import BatchStream, make_optimizer, train_step  # noqa: E402

BATCH = 128


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n matmul (the machine's practical ceiling)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def train_flops_per_sample(arch: str) -> float:
    """Forward + backward FLOPs of one training step, per sample (FlopCounterMode)."""
    model = build_model(arch)
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / BATCH


def _warm_trainer(arch: str, train: Split) -> Callable[[], float]:
    """One prunetime training step of a fresh ``arch`` with Adam, after five warm-up steps."""
    model = build_model(arch)
    opt = make_optimizer("adam", list(model.parameters()), 0.001)
    stream = BatchStream(len(train), BATCH, torch.Generator().manual_seed(0))

    def step() -> float:
        return train_step(model, opt, *train.batch(next(stream)))

    for _ in range(5):
        step()
    return step


# The kernels that do a step's FLOPs (forward, both backward products) and its optimizer update.
KERNELS = (
    "aten::addmm", "aten::mm", "aten::mkldnn_convolution", "aten::convolution_backward",
    "aten::_fused_adam_",
)  # fmt: skip


def kernel_seconds(arch: str, train: Split, steps: int = 100) -> float:
    """Seconds per step spent in the step's matmul/convolution kernels and its fused Adam
    (self CPU time under torch.profiler: what no trainer using these kernels can go below)."""
    from torch.profiler import ProfilerActivity, profile

    step = _warm_trainer(arch, train)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    us = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in KERNELS)
    return us / 1e6 / steps


def ours(arch: str, train: Split, steps: int) -> float:
    """Samples/s of prunetime's trainer (in-memory tensors, index batches)."""
    step = _warm_trainer(arch, train)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - t0)


def recipe(arch: str, root: Path, steps: int) -> float:
    """Samples/s of torchvision MNIST + DataLoader + ToTensor/Normalize + torch.optim.Adam."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    ds = datasets.MNIST(str(root), train=True, download=False, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, drop_last=True)
    model = build_model(arch)
    opt = torch.optim.Adam(model.parameters(), lr=0.001)
    it = iter(loader)

    def step() -> None:
        nonlocal it
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(loader)
            xb, yb = next(it)
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()

    for _ in range(5):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=1, help="torch threads (jobs use 1)")
    add_mirror_arg(p)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        root, prepared = tmp_path / "raw", tmp_path / "mnist.pt"
        # One copy of the originals: torchvision's MNIST folder (the recipe reads it) and the
        # prepared uint8 tensors it yields (prunetime reads those; same normalisation).
        prepare_dataset("mnist", root, prepared, n_val=5000, split_seed=0, mirror=a.mirror)
        train = load_prepared(prepared, "standardize").train
        ceiling = matmul_gflops()
        print(f"threads {a.threads}; fp32 matmul ceiling {ceiling:.1f} GFLOP/s (2048^3, best of 5)")
        print(
            f"{'model':<12} {'ours/s':>9} {'recipe/s':>9} {'speedup':>8} {'GFLOP/s':>8} "
            f"{'of ceiling':>10} {'kernels ms':>10} {'bound':>6}"
        )
        for arch in ("lenet300100", "lenet5"):
            fps = train_flops_per_sample(arch)
            rec = recipe(arch, root, a.steps)
            our = ours(arch, train, a.steps)
            achieved = our * fps / 1e9
            kern = kernel_seconds(arch, train)
            bound = BATCH * fps / kern / 1e9 / ceiling
            print(
                f"{arch:<12} {our:9.0f} {rec:9.0f} {our / rec:7.1f}x {achieved:8.1f} "
                f"{achieved / ceiling:9.0%} {kern * 1e3:10.2f} {bound:6.0%}"
            )
        print(
            "bound: the share of the ceiling if only the step's matmul/conv kernels and its "
            "Adam update took time (everything else free)"
        )


if __name__ == "__main__":
    main()
