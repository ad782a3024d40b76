"""Dense training and retraining to convergence on in-memory tensors (no DataLoader).

Iterations are optimizer steps of one minibatch each. Minibatches are drawn epoch by
epoch from a seeded permutation, so runs are reproducible and epochs are well defined.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunetime import backprop
from prunetime.data import EVAL_CHUNK, Split
from prunetime.io import load_torch, save_torch


def resolve_device(device: str) -> str:
    """'auto' picks CUDA when present, else the CPU; explicit 'cuda' without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config key device='cuda' but no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"config key device={device!r}; allowed: 'auto', 'cpu', 'cuda'")
    return device


class ProgressLog:
    """Throttled progress lines for a rule's log: at most one every ``every_s`` seconds.

    Long jobs (dense training, a retraining ensemble) call it at every step or check; a
    user follows a run with ``tail -f results/<study>/logs/<rule>/...log``.
    """

    def __init__(
        self, label: str, total: int, every_s: float = 10.0, logger: logging.Logger | None = None
    ) -> None:
        self.label, self.total, self.every_s = label, total, every_s
        self.log = logger or logging.getLogger("prunetime")
        self.start = time.monotonic()
        self.last = -math.inf

    def __call__(self, info: dict[str, Any] | int, total: int | None = None) -> None:
        """``info``: a dict of fields (ensemble) or the current step of ``total`` (dense)."""
        now = time.monotonic()
        final = isinstance(info, dict) and info.get("active") == 0  # always log the end
        if now - self.last < self.every_s and not final:
            return
        self.last = now
        if isinstance(info, dict):
            fields = ", ".join(f"{k} {v}" for k, v in info.items())
            elapsed = now - self.start
            self.log.info("%s: %s of %d trials [%.0f s]", self.label, fields, self.total, elapsed)
        else:
            self.log.info(
                "%s: step %d/%d [%.0f s]", self.label, info, total or self.total, now - self.start
            )


class Optimizer:
    """Adam or SGD over a list of parameters with torch.optim's interface and update rules.

    It is :class:`prunetime.ensemble.StackedOptimizer` (elementwise, so any shapes) behind
    ``zero_grad``/``step``/``state_dict``: the first ``torch.optim`` step imports torch's
    compiler stack, seconds of start-up in every training job.
    """

    def __init__(self, name: str, params: list[nn.Parameter], lr: float, momentum: float) -> None:
        from prunetime.ensemble import StackedOptimizer

        self.params = {str(i): p for i, p in enumerate(params)}
        self.impl = StackedOptimizer(name, self.params, lr, momentum)
        self.name, self.lr, self.momentum = name, lr, momentum

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params.values():
            p.grad = None

    def step(self) -> None:
        self.impl.step(self.params)

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.impl.t, "state": self.impl.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.impl.t, self.impl.state = state["t"], state["state"]


def make_optimizer(
    name: str, params: Iterator[nn.Parameter] | list[nn.Parameter], lr: float, momentum: float = 0.0
) -> Optimizer:
    """The optimizer of a training run (``adam`` or ``sgd``, torch.optim's defaults)."""
    return Optimizer(name, list(params), lr, momentum)


class BatchStream:
    """Endless stream of index batches: a fresh seeded permutation every epoch.

    The last partial batch of an epoch is dropped so every step sees ``batch_size`` samples.
    Its position can be saved and restored, so a resumed training sees the same batches.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        if not 0 < batch_size <= n:
            raise ValueError(
                f"batch_size={batch_size} must lie in [1, {n}] (the training split size)"
            )
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.perm: torch.Tensor | None = None
        self.pos = 0

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> torch.Tensor:
        if self.perm is None or self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(
                self.n, generator=self.generator, device=self.generator.device
            )
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.generator.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["rng"])
        self.perm, self.pos = state["perm"], state["pos"]
        if self.perm is not None:
            self.perm = self.perm.to(self.generator.device)


def batches(n: int, batch_size: int, generator: torch.Generator) -> BatchStream:
    return BatchStream(n, batch_size, generator)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, chunk: int = EVAL_CHUNK) -> tuple[float, float]:
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
    """One optimizer step; with masks, pruned weights get no gradient and stay exactly zero.

    A fully connected chain (``linear_chain()``) takes its gradients from
    :mod:`prunetime.backprop`, bitwise autograd's, without building a graph.
    """
    opt.zero_grad(set_to_none=True)
    chain = backprop.chain_of(model)
    if chain is not None:
        named = dict(model.named_parameters())
        loss, grads = backprop.loss_and_grads(chain, named, x, y)
        for name, g in grads.items():
            named[name].grad = g
    else:
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
    resume: Path | None = None,
    checkpoint_every: int = 0,
    fingerprint: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> DenseResult:
    """Initial training for exactly ``steps`` optimizer steps; logs a curve on the eval set.

    With ``resume`` and ``checkpoint_every`` > 0, the full training state (model,
    optimizer, batch stream and RNG, curve, step) is saved atomically every that many
    steps, and a matching checkpoint found at start is resumed from: a killed job loses at
    most ``checkpoint_every`` steps and ends with exactly the weights of an uninterrupted run.
    """
    opt = make_optimizer(optimizer, list(model.parameters()), lr, momentum)
    stream = BatchStream(len(train), batch_size, generator)
    curve: list[dict[str, float]] = []
    running, count, start = 0.0, 0, 1
    state = _load_resume(resume, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        stream.load_state_dict(state["stream"])
        curve, running, count = list(state["curve"]), state["running"], state["count"]
        start = state["step"] + 1
        logging.getLogger("prunetime").info("resumed dense training at step %d", state["step"])
    else:
        loss0, acc0 = evaluate(model, evalset)
        curve.append({"step": 0, "train_loss": math.nan, "eval_loss": loss0, "eval_acc": acc0})
    for step in range(start, steps + 1):
        idx = next(stream)
        running += train_step(model, opt, *train.batch(idx))
        count += 1
        if step % log_every == 0 or step == steps:
            loss, acc = evaluate(model, evalset)
            curve.append(
                {"step": step, "train_loss": running / count, "eval_loss": loss, "eval_acc": acc}
            )
            running, count = 0.0, 0
        if resume is not None and checkpoint_every > 0 and step % checkpoint_every == 0:
            save_torch(
                resume,
                {
                    "fingerprint": fingerprint,
                    "step": step,
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "stream": stream.state_dict(),
                    "curve": curve,
                    "running": running,
                    "count": count,
                },
            )
        if progress is not None:
            progress(step, steps)
    return DenseResult(curve=curve, steps=steps)


def _load_resume(path: Path | None, fingerprint: str) -> dict[str, Any] | None:
    """A resumable state saved for the same job (same fingerprint), else None."""
    if path is None or not Path(path).is_file():
        return None
    state = load_torch(path)
    if state.get("fingerprint") != fingerprint or "t" not in state.get("opt", {}):
        return None  # another job's state, or one saved by an older optimizer format
    return state


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
    divergence_factor: float = 100.0,
    check_every: int = 1,
) -> RetrainResult:
    """Retrain ``model`` in place until |L(W_t) - L(W*)| <= eps (one trial of
    :func:`prunetime.ensemble.retrain_trials`, which holds the loop and its statuses).

    Status is 'diverged' (with ``iterations`` = the step it happened at) when the loss
    becomes non-finite or exceeds ``divergence_factor`` times the loss right after pruning
    (cross-entropy of exploding logits stays finite, so non-finiteness alone misses blow-ups);
    'capped' when ``max_iters`` steps did not reach the criterion. With ``check_every=1``
    ``eval_losses[t]`` is the loss after t steps.
    """
    from prunetime.ensemble import TrialSpec, retrain_trials

    state = {k: v.detach().clone() for k, v in model.named_parameters()}
    (res,) = retrain_trials(
        model,
        [TrialSpec(state, masks, generator)],
        train,
        evalset,
        target_loss=target_loss,
        eps=eps,
        optimizer=optimizer,
        lr=lr,
        batch_size=batch_size,
        max_iters=max_iters,
        momentum=momentum,
        divergence_factor=divergence_factor,
        check_every=check_every,
        screen=False,  # every check's loss: eval_losses is indexed by step
        batched=False,
    )
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(res.state[k])
    return RetrainResult(
        res.iterations, res.status, res.final_eval_loss, [loss for _, loss in res.eval_losses]
    )
