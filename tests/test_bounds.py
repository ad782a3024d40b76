"""The formulas of THEORY.md section A against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from prunetime import bounds
from prunetime.data import Split
from prunetime.models import build_model, init_weights, weight_names
from prunetime.pruning import apply_pruning, build_pruner


def test_upper_bound_hand_case():
    # ||W_s - W*||^2 / (2 eta eps) = 3 / (2 * 0.01 * 0.5) = 300
    assert bounds.upper_bound(3.0, 0.01, 0.5) == pytest.approx(300.0)
    # doubling eps halves the bound, doubling d2 doubles it
    assert bounds.upper_bound(3.0, 0.01, 1.0) == pytest.approx(150.0)
    assert bounds.upper_bound(6.0, 0.01, 0.5) == pytest.approx(600.0)


def test_lower_bound_hand_case():
    # gamma * (mu1/mu2) * (g_s / g_init) * t_init
    assert bounds.lower_bound(g_s=2.0, g_init=8.0, t_init=400) == pytest.approx(100.0)
    assert bounds.lower_bound(g_s=2.0, g_init=8.0, t_init=400, gamma=1.5) == pytest.approx(150.0)
    assert bounds.lower_bound(
        g_s=2.0, g_init=8.0, t_init=400, gamma=1.5, mu_ratio=2.0
    ) == pytest.approx(300.0)
    # the ratio is g(W_s) / g(W_init), not the other way round
    assert bounds.lower_bound(g_s=8.0, g_init=2.0, t_init=400) == pytest.approx(1600.0)


def test_gamma_max_hand_case():
    # d2 g_init / (2 eta eps t_init g_s) = 3 * 8 / (2 * 0.01 * 0.5 * 400 * 2) = 24 / 8 = 3
    assert bounds.gamma_max(
        d2=3.0, g_init=8.0, eta=0.01, eps=0.5, t_init=400, g_s=2.0
    ) == pytest.approx(3.0)
    # with mu1/mu2 = 2 the admissible gamma halves
    assert bounds.gamma_max(
        d2=3.0, g_init=8.0, eta=0.01, eps=0.5, t_init=400, g_s=2.0, mu_ratio=2.0
    ) == pytest.approx(1.5)
    # no gradient left after pruning: the lower bound is 0 for every gamma
    assert bounds.gamma_max(d2=3.0, g_init=8.0, eta=0.01, eps=0.5, t_init=400, g_s=0.0) == math.inf


@pytest.mark.parametrize("mu_ratio", [1.0, 0.3, 2.5])
def test_lower_bound_equals_upper_bound_at_gamma_max(mu_ratio):
    rng = np.random.default_rng(7)
    for _ in range(20):
        d2, g_init, g_s = rng.uniform(0.01, 50.0, size=3)
        eta, eps = rng.uniform(1e-4, 0.1), rng.uniform(1e-3, 1.0)
        t_init = int(rng.integers(10, 5000))
        gmax = bounds.gamma_max(d2, g_init, eta, eps, t_init, g_s, mu_ratio=mu_ratio)
        lo = bounds.lower_bound(g_s, g_init, t_init, gamma=gmax, mu_ratio=mu_ratio)
        up = bounds.upper_bound(d2, eta, eps)
        assert lo == pytest.approx(up, rel=1e-12)
        # a slightly larger gamma breaks lower <= upper, a slightly smaller one keeps it
        assert bounds.lower_bound(g_s, g_init, t_init, gamma=gmax * 1.01, mu_ratio=mu_ratio) > up
        assert bounds.lower_bound(g_s, g_init, t_init, gamma=gmax * 0.99, mu_ratio=mu_ratio) < up


def test_fit_gamma_quantile_zero_is_min_ratio():
    iterations = [10.0, 40.0, 9.0, 30.0]
    base = [2.0, 4.0, 3.0, 10.0]  # ratios 5, 10, 3, 3
    gamma = bounds.fit_gamma(iterations, base, quantile=0.0)
    assert gamma == pytest.approx(3.0)
    assert all(gamma * b <= it for it, b in zip(iterations, base, strict=True))


def test_fit_gamma_ignores_unusable_runs():
    # non-finite iterations and non-positive or non-finite base values are left out
    iterations = [10.0, math.nan, 8.0, 50.0, 6.0]
    base = [5.0, 1.0, 0.0, math.inf, 1.0]  # usable ratios: 2 (run 0) and 6 (run 4)
    assert bounds.fit_gamma(iterations, base) == pytest.approx(2.0)
    assert math.isnan(bounds.fit_gamma([math.nan, 3.0], [1.0, 0.0]))


def test_fit_gamma_positive_quantile_hand_case():
    # ratios 1..10 in scrambled order; quantile 0.25 allows 2 of 10 runs (20 %) to violate
    # the bound, a third violation (30 %) would be too many -> gamma = 3rd smallest ratio = 3
    ratios = np.array([7, 3, 10, 1, 5, 9, 2, 8, 6, 4], dtype=float)
    base = np.array([2.0, 0.5, 1.0, 4.0, 3.0, 1.5, 2.5, 1.0, 0.25, 5.0])
    iterations = ratios * base
    gamma = bounds.fit_gamma(iterations, base, quantile=0.25)
    assert gamma == pytest.approx(3.0)
    violations = np.sum(gamma * base > iterations * (1 + 1e-12))
    assert violations == 2


def _largest_gamma_brute_force(iterations, base, quantile):
    """Independent reading of the docstring: the largest gamma (one of the ratios) such
    that gamma * base <= iterations fails on at most a `quantile` share of the runs."""
    it, b = np.asarray(iterations, float), np.asarray(base, float)
    n = len(it)
    best = -math.inf
    for cand in it / b:
        fails = int(np.sum(cand * b > it * (1 + 1e-12)))
        if fails <= quantile * n + 1e-9:
            best = max(best, cand)
    return best


@pytest.mark.parametrize(
    ("n", "quantile"),
    [(10, 0.1), (20, 0.05), (40, 0.05), (10, 0.3), (7, 0.5), (13, 0.2)],
)
def test_fit_gamma_is_largest_gamma_allowed_by_quantile(n, quantile):
    """fit_gamma's docstring: 'Largest gamma ... for all runs but a quantile share';
    0.05 'lets it fail on at most 5 %'. With 10 runs and quantile 0.1 one violation is
    allowed, so gamma must be the second-smallest ratio."""
    rng = np.random.default_rng(n)
    base = rng.uniform(0.5, 5.0, size=n)
    ratios = rng.permutation(np.arange(1, n + 1, dtype=float))
    iterations = ratios * base
    expected = _largest_gamma_brute_force(iterations, base, quantile)
    assert expected == pytest.approx(math.floor(quantile * n + 1e-9) + 1)  # sanity of the oracle
    assert bounds.fit_gamma(iterations, base, quantile=quantile) == pytest.approx(expected)


def test_mean_ci_against_t_table():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    # mean 3, sample sd sqrt(2.5), sem sqrt(2.5/5); t(0.975, df=4) = 2.776445 (t table)
    sem = math.sqrt(np.var(values, ddof=1) / len(values))
    m, lo, hi = bounds.mean_ci(values, level=0.95)
    assert m == pytest.approx(3.0)
    assert lo == pytest.approx(3.0 - 2.776445 * sem, abs=1e-5)
    assert hi == pytest.approx(3.0 + 2.776445 * sem, abs=1e-5)
    # 90 %: t(0.95, df=4) = 2.131847
    m, lo, hi = bounds.mean_ci(values, level=0.90)
    assert (lo, hi) == pytest.approx((3.0 - 2.131847 * sem, 3.0 + 2.131847 * sem), abs=1e-5)


def test_mean_ci_larger_sample_against_t_table():
    rng = np.random.default_rng(3)
    values = rng.normal(10.0, 2.0, size=11)
    sem = values.std(ddof=1) / math.sqrt(11)
    # t(0.975, df=10) = 2.228139 (t table)
    m, lo, hi = bounds.mean_ci(values.tolist())
    assert m == pytest.approx(values.mean())
    assert hi - m == pytest.approx(2.228139 * sem, rel=1e-6)
    assert m - lo == pytest.approx(2.228139 * sem, rel=1e-6)


def test_mean_ci_degenerate_inputs():
    assert all(math.isnan(v) for v in bounds.mean_ci([]))
    m, lo, hi = bounds.mean_ci([4.0])
    assert m == 4.0 and math.isnan(lo) and math.isnan(hi)
    assert bounds.mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    # non-finite values are dropped before computing: same as the finite values alone
    assert bounds.mean_ci([1.0, math.nan, 2.0, 3.0, math.inf, 4.0, 5.0]) == pytest.approx(
        bounds.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    )


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_grad_sq_norms_matches_analytic_gradient():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 5, generator=g)
    y = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    split = Split(x, y)

    W = model.weight.detach().double().numpy()
    b = model.bias.detach().double().numpy()
    X = x.double().numpy()
    onehot = np.eye(3)[y.numpy()]
    delta = (_softmax(X @ W.T + b) - onehot) / len(X)  # d(mean CE)/d(logits)
    grad_w = delta.T @ X  # (softmax - onehot)^T x / n
    grad_b = delta.sum(axis=0)

    out = bounds.grad_sq_norms(model, split, ["weight"])
    assert set(out) == {"weight"}
    assert out["weight"] == pytest.approx(float((grad_w**2).sum()), rel=1e-5)
    both = bounds.grad_sq_norms(model, split, ["weight", "bias"])
    assert both["bias"] == pytest.approx(float((grad_b**2).sum()), rel=1e-5)
    # the gradient is computed functionally: parameters and their .grad are left alone
    assert model.weight.grad is None
    assert np.array_equal(model.weight.detach().double().numpy(), W)


def test_grad_sq_norms_per_layer_on_lenet():
    model = build_model("lenet300100")
    init_weights(model, "normal", 0.1, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(2)
    split = Split(torch.rand(20, 1, 28, 28, generator=g), torch.randint(0, 10, (20,), generator=g))
    names = weight_names(model)
    out = bounds.grad_sq_norms(model, split, names)
    assert list(out) == names
    # cross-check one layer against torch's own backward
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(split.x), split.y).backward()
    for n, p in model.named_parameters():
        if n in names:
            assert out[n] == pytest.approx(float(p.grad.double().pow(2).sum()), rel=1e-6)


def test_sq_distance_weights_only():
    a = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([10.0])}
    b = {"w": torch.tensor([[1.0, 0.0], [0.0, 4.0]]), "b": torch.tensor([0.0])}
    # (2-0)^2 + (3-0)^2 = 13; the bias difference (100) is excluded
    assert bounds.sq_distance(a, b, ["w"]) == pytest.approx(13.0)
    assert bounds.sq_distance(a, b, ["w", "b"]) == pytest.approx(113.0)
    assert bounds.sq_distance(a, a, ["w", "b"]) == 0.0


def test_sq_distance_after_pruning_is_sum_of_removed_weights_squared():
    model = build_model("lenet300100")
    init_weights(model, "normal", 0.1, torch.Generator().manual_seed(0))
    w_star = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = weight_names(model)
    masks, _ = apply_pruning(
        model, build_pruner("random"), names, 0.4, torch.Generator().manual_seed(5)
    )
    w_s = model.state_dict()
    removed = sum(float(w_star[n][~masks[n]].double().pow(2).sum()) for n in names)
    assert removed > 0
    assert bounds.sq_distance(w_s, w_star, names) == pytest.approx(removed, rel=1e-9)
