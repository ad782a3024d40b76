"""Curvature estimates mu1, mu2 of THEORY.md section B and the epoch lower bound.

mu1 describes initial training (W_init -> W*), mu2 retraining (W_s -> W*). Two estimators,
both on the evaluation set and over the weight tensors (biases excluded, as everywhere in
the bounds):

* secant, for connection pruning:
  mu1 = ||grad L(W_init) - grad L(W*)|| / ||W_init - W*||,
  mu2 = ||grad L(W_s) - grad L(W*)|| / ||W_s - W*||;
* Polyak-Lojasiewicz (PL), for node/filter pruning:
  mu1 = ||grad L(W_init)||^2 / (2 |L(W_init) - L(W*)|),
  mu2 = ||grad L(W_s)||^2 / (2 |L(W_s) - L(W*)|).

Norms over all layers are the square root of the sum of per-layer squared norms. A ratio
with a zero denominator is NaN (undefined), never infinite, so it drops out of means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only grad_vectors needs torch; the bounds job imports the formulas
    import torch
    from torch import nn

    from prunetime.data import Split

ESTIMATORS = {"connection": "secant", "node": "pl"}


def grad_vectors(model: nn.Module, split: Split, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Full-batch gradient of the mean cross-entropy on ``split`` per named weight tensor.

    The same computation as :func:`prunetime.bounds.grad_sq_norms`, kept as tensors (on the
    CPU, float64) so differences of gradients can be taken.
    """
    import torch
    import torch.nn.functional as F

    from prunetime.data import GRAD_CHUNK

    params = dict(model.named_parameters())
    wanted = [params[n] for n in names]
    model.zero_grad(set_to_none=True)
    total = [torch.zeros_like(p) for p in wanted]
    # Chunked (cache-sized passes); the chunks' summed losses over the split's size give the
    # full-batch mean's gradient.
    for start in range(0, len(split), GRAD_CHUNK):
        x, y = split.x[start : start + GRAD_CHUNK], split.y[start : start + GRAD_CHUNK]
        loss = F.cross_entropy(model(x), y, reduction="sum") / len(split)
        for acc, g in zip(total, torch.autograd.grad(loss, wanted), strict=True):
            acc += g
    return {n: g.detach().cpu().double() for n, g in zip(names, total, strict=True)}


def sq_norm(vec: Mapping[str, torch.Tensor], names: Sequence[str] | None = None) -> float:
    """Sum over tensors of the squared Frobenius norm (g(W) when ``vec`` is a gradient)."""
    keys = list(vec) if names is None else names
    return float(sum(vec[n].double().pow(2).sum() for n in keys))


def diff_norm(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], names: Sequence[str]
) -> float:
    """||A - B|| over the named tensors."""
    return math.sqrt(sum(float((a[n].double() - b[n].double()).pow(2).sum()) for n in names))


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 and math.isfinite(den) else math.nan


def secant(
    grad_a: Mapping[str, torch.Tensor],
    grad_b: Mapping[str, torch.Tensor],
    w_a: Mapping[str, torch.Tensor],
    w_b: Mapping[str, torch.Tensor],
    names: Sequence[str],
) -> float:
    """||grad L(A) - grad L(B)|| / ||A - B||."""
    return _ratio(diff_norm(grad_a, grad_b, names), diff_norm(w_a, w_b, names))


def pl(grad_sq: float, loss: float, loss_star: float) -> float:
    """||grad L(W)||^2 / (2 |L(W) - L(W*)|)."""
    return _ratio(grad_sq, 2.0 * abs(loss - loss_star))


def estimator_for(level: str) -> str:
    """Secant for connection pruning, PL for node/filter pruning (THEORY.md B)."""
    try:
        return ESTIMATORS[level]
    except KeyError:
        raise ValueError(
            f"unknown pruning level {level!r}; allowed: {sorted(ESTIMATORS)}"
        ) from None


def epoch_lower_bound(
    g_s: float, g_init: float, epochs_init: float, mu1: float, mu2: float, gamma: float = 1.0
) -> float:
    """t_sparse (epochs) >= gamma * (mu1/mu2) * (g(W_s)/g(W_init)) * t_initial (epochs)."""
    return gamma * _ratio(mu1, mu2) * _ratio(g_s, g_init) * epochs_init
