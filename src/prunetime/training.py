"""Dense training and retraining to convergence on in-memory tensors (no DataLoader).

Iterations are optimizer steps of one minibatch each. Minibatches are drawn epoch by
epoch from a seeded permutation, so runs are reproducible and epochs are well defined.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from prunetime.data import Split


def resolve_device(device: str) -> str:
    """'auto' picks CUDA when present, else the CPU; explicit 'cuda' without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config key device='cuda' but no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"config key device={device!r}; allowed: 'auto', 'cpu', 'cuda'")
    return device


def make_optimizer(
    name: str, params: Iterator[nn.Parameter] | list[nn.Parameter], lr: float, momentum: float = 0.0
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}; allowed: 'adam', 'sgd'")


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless stream of index batches: a fresh seeded permutation every epoch.

    The last partial batch of an epoch is dropped so every step sees ``batch_size`` samples.
    """
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must lie in [1, {n}] (the training split size)")
    while True:
        perm = torch.randperm(n, generator=generator, device=generator.device)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start : start + batch_size]


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, chunk: int = 10_000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``split``."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(split), chunk):
        x, y = split.x[start : start + chunk], split.y[start : start + chunk]
        out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
    model.train()
    return loss_sum / len(split), correct / len(split)


def train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    masks: dict[str, torch.Tensor] | None = None,
    params: dict[str, nn.Parameter] | None = None,
) -> float:
    """One optimizer step; with masks, pruned weights get no gradient and stay exactly zero."""
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    if masks:
        assert params is not None
        for name, m in masks.items():
            params[name].grad.mul_(m)
    opt.step()
    if masks:
        with torch.no_grad():
            for name, m in masks.items():
                params[name].mul_(m)
    return float(loss.detach())


@dataclass
class DenseResult:
    curve: list[dict[str, float]]
    steps: int


def train_dense(
    model: nn.Module,
    train: Split,
    evalset: Split,
    *,
    optimizer: str,
    lr: float,
    batch_size: int,
    steps: int,
    generator: torch.Generator,
    log_every: int = 10,
    momentum: float = 0.0,
) -> DenseResult:
    """Initial training for exactly ``steps`` optimizer steps; logs a curve on the eval set."""
    opt = make_optimizer(optimizer, list(model.parameters()), lr, momentum)
    stream = batches(len(train), batch_size, generator)
    curve: list[dict[str, float]] = []
    loss0, acc0 = evaluate(model, evalset)
    curve.append({"step": 0, "train_loss": math.nan, "eval_loss": loss0, "eval_acc": acc0})
    running, count = 0.0, 0
    for step in range(1, steps + 1):
        idx = next(stream)
        running += train_step(model, opt, train.x[idx], train.y[idx])
        count += 1
        if step % log_every == 0 or step == steps:
            loss, acc = evaluate(model, evalset)
            curve.append(
                {"step": step, "train_loss": running / count, "eval_loss": loss, "eval_acc": acc}
            )
            running, count = 0.0, 0
    return DenseResult(curve=curve, steps=steps)


@dataclass
class RetrainResult:
    """Outcome of one retraining run; ``iterations`` is exact (0 if already within eps)."""

    iterations: int
    status: str  # converged | capped | diverged
    final_eval_loss: float
    eval_losses: list[float] = field(default_factory=list)  # index t = loss after t steps


def retrain_to_convergence(
    model: nn.Module,
    train: Split,
    evalset: Split,
    *,
    target_loss: float,
    eps: float,
    optimizer: str,
    lr: float,
    batch_size: int,
    max_iters: int,
    generator: torch.Generator,
    masks: dict[str, torch.Tensor] | None = None,
    momentum: float = 0.0,
) -> RetrainResult:
    """Retrain with a fresh optimizer until |L(W_t) - L(W*)| <= eps, checking after every step.

    Status is 'diverged' (with ``iterations`` = the step it happened at) when the loss
    becomes non-finite, 'capped' when ``max_iters`` steps did not reach the criterion.
    """
    params = dict(model.named_parameters())
    opt = make_optimizer(optimizer, list(params.values()), lr, momentum)
    stream = batches(len(train), batch_size, generator)
    loss, _ = evaluate(model, evalset)
    losses = [loss]
    if abs(loss - target_loss) <= eps:
        return RetrainResult(0, "converged", loss, losses)
    for t in range(1, max_iters + 1):
        idx = next(stream)
        train_step(model, opt, train.x[idx], train.y[idx], masks, params)
        loss, _ = evaluate(model, evalset)
        losses.append(loss)
        if not math.isfinite(loss):
            return RetrainResult(t, "diverged", loss, losses)
        if abs(loss - target_loss) <= eps:
            return RetrainResult(t, "converged", loss, losses)
    return RetrainResult(max_iters, "capped", loss, losses)
