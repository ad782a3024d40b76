"""The retraining-time bounds of THEORY.md section A, computed exactly as written.

Notation follows THEORY.md: g(W) = sum over layers of ||dL/dW_l||^2 (weights only, on the
evaluation set), d2 = ||W_s - W*||^2 over weight tensors, eta = learning rate, eps =
convergence error, t_init = optimizer steps of initial training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the formulas below need no torch: the bounds job computes only those
    import torch
    from torch import nn

    from prunetime.data import Split


def grad_sq_norms(model: nn.Module, split: Split, names: Sequence[str]) -> dict[str, float]:
    """Per-layer ||dL/dW_l||^2 of the mean cross-entropy on ``split`` (one full-batch gradient)."""
    from prunetime.curvature import grad_vectors

    return {n: float(g.pow(2).sum()) for n, g in grad_vectors(model, split, names).items()}


def sq_distance(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], names: Sequence[str]
) -> float:
    """||A - B||^2 summed over the named weight tensors (biases excluded by the caller)."""
    return float(sum((a[n].double() - b[n].double()).pow(2).sum() for n in names))


def upper_bound(d2: float, eta: float, eps: float) -> float:
    """t_retrain <= ||W_s - W*||^2 / (2 eta eps)."""
    return d2 / (2.0 * eta * eps)


def lower_bound(
    g_s: float, g_init: float, t_init: float, gamma: float = 1.0, mu_ratio: float = 1.0
) -> float:
    """t_retrain >= gamma * (mu1/mu2) * (g(W_s) / g(W_init)) * t_init."""
    return gamma * mu_ratio * (g_s / g_init) * t_init


def gamma_max(
    d2: float,
    g_init: float,
    eta: float,
    eps: float,
    t_init: float,
    g_s: float,
    mu_ratio: float = 1.0,
) -> float:
    """Largest gamma for which lower <= upper: d2 g_init / (2 eta eps t_init g_s).

    With a curvature ratio mu1/mu2 != 1 the same condition divides by it as well.
    """
    denom = 2.0 * eta * eps * t_init * g_s * mu_ratio
    return math.inf if denom == 0 else d2 * g_init / denom


def fit_gamma(iterations: Sequence[float], base: Sequence[float], quantile: float = 0.0) -> float:
    """Largest gamma with ``gamma * base <= iterations`` for all runs but a ``quantile`` share.

    ``base`` is the lower bound at gamma = 1. quantile = 0 makes the bound hold for every
    run (gamma = min of the ratios); 0.05 lets it fail on at most 5 % of them.
    """
    it = np.asarray(iterations, dtype=float)
    b = np.asarray(base, dtype=float)
    ok = np.isfinite(it) & np.isfinite(b) & (b > 0)
    if not ok.any():
        return math.nan
    ratios = np.sort(it[ok] / b[ok])
    # With n runs, at most floor(q * n) may fall below the bound: skip that many smallest.
    k = min(math.floor(quantile * len(ratios) + 1e-9), len(ratios) - 1)
    return float(ratios[k])


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval (lo, hi); the interval is NaN for n < 2."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan
    sem = float(stats.sem(v))
    if sem == 0:
        return m, m, m
    lo, hi = stats.t.interval(level, len(v) - 1, loc=m, scale=sem)
    return m, float(lo), float(hi)
