"""T* estimators on curves with known answers, the law fits, and the NTK's lambda0."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from prunetime.greedy import TwoLayerNet, build_two_layer, prepare_inputs
from prunetime.ntk import empirical_ntk, infinite_width_gram, smallest_eigenvalue, two_layer_ntk
from prunetime.threshold import (
    DEFINITIONS,
    LAWS,
    bootstrap_fits,
    fit_law,
    fit_table,
    threshold_step,
    threshold_summary,
    thresholds,
)

# --------------------------------------------------------------------------- T* on curves


def log_grid(t_max: float, count: int) -> np.ndarray:
    return np.concatenate([[0.0], np.unique(np.round(np.geomspace(1, t_max, count)))])


def test_within_on_exponential_curve_returns_the_analytic_crossing() -> None:
    """L(t) = L_inf + A exp(-t / tau): within 5 % of L(T) first at t = tau ln(A / (0.05 L(T)))."""
    tau, amp, floor = 300.0, 2.0, 0.25
    steps = log_grid(20_000, 400)
    loss = floor + amp * np.exp(-steps / tau)
    final = loss[-1]
    exact = tau * math.log(amp / (0.05 * final + final - floor))
    t_star = threshold_step(steps, loss, "within", tolerance=0.05)
    assert t_star == pytest.approx(exact, rel=2e-3)
    raw = threshold_step(steps, loss, "within", tolerance=0.05, interpolate=False)
    assert raw == steps[np.searchsorted(steps, exact)]  # the first checkpoint past the crossing
    assert raw >= t_star


def _knee_curve(t1: float, t2: float, steps: np.ndarray) -> np.ndarray:
    """1.0 until t1, falling linearly in log(1 + t) to 0.2 at t2, flat after: knee at t2."""
    u, u1, u2 = np.log1p(steps), math.log1p(t1), math.log1p(t2)
    return np.where(u <= u1, 1.0, np.where(u >= u2, 0.2, 1.0 - 0.8 * (u - u1) / (u2 - u1)))


def test_knee_settled_and_drop_on_a_plateau_to_plateau_curve() -> None:
    steps = log_grid(10_000, 30)
    t1, t2 = float(steps[8]), float(steps[18])  # breakpoints on checkpoints
    loss = _knee_curve(t1, t2, steps)
    assert threshold_step(steps, loss, "knee") == t2
    # The lower plateau is exactly the final value, so 'within' and 'settled' sit just before
    # t2, where the straight segment enters the 5 % band: 1 - 0.8 s = 0.2 * 1.05.
    s = (1.0 - 0.21) / 0.8
    band_entry = math.expm1(math.log1p(t1) + s * (math.log1p(t2) - math.log1p(t1)))
    for d in ("within", "settled"):
        assert threshold_step(steps, loss, d, tolerance=0.05) == pytest.approx(band_entry, rel=1e-9)
    drop90 = math.expm1(math.log1p(t1) + 0.9 * (math.log1p(t2) - math.log1p(t1)))
    assert threshold_step(steps, loss, "drop", drop_fraction=0.9) == pytest.approx(drop90, rel=1e-9)


def test_within_takes_the_first_entry_settled_the_last() -> None:
    steps = np.array([0, 1, 2, 4, 8, 16, 32, 64], dtype=float)
    loss = np.array(
        [1.0, 0.6, 0.41, 0.55, 0.6, 0.45, 0.41, 0.40]
    )  # dips in at t=2, leaves, returns
    assert threshold_step(steps, loss, "within", interpolate=False) == 2.0
    assert threshold_step(steps, loss, "settled", interpolate=False) == 32.0
    # Interpolated values stay between the bracketing checkpoints.
    assert 1.0 < threshold_step(steps, loss, "within") < 2.0
    assert 16.0 < threshold_step(steps, loss, "settled") < 32.0


def test_threshold_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="increasing"):
        threshold_step([0, 2, 1], [1.0, 0.5, 0.4])
    with pytest.raises(ValueError, match="unknown threshold"):
        threshold_step([0, 1, 2], [1.0, 0.5, 0.4], "fastest")
    with pytest.raises(ValueError, match="finite"):
        threshold_step([0, 1, 2], [1.0, math.nan, 0.4])


# --------------------------------------------------------------------------- fits


M = np.array([1000, 2000, 4000, 8000, 16000, 32000, 49580], dtype=float)


@pytest.mark.parametrize(
    ("law", "a", "b"), [("log", -800.0, 150.0), ("power", 3.0, 0.55), ("linear", 100.0, 0.02)]
)
def test_each_law_recovers_its_own_data_and_wins_on_aic(law: str, a: float, b: float) -> None:
    rng = np.random.default_rng(1)
    t = LAWS[law][1](M, a, b)
    noisy = t * (1 + 0.01 * rng.standard_normal(len(M)))
    fits = {name: fit_law(name, M, noisy) for name in LAWS}
    assert fits[law].a == pytest.approx(a, rel=0.1)
    assert fits[law].b == pytest.approx(b, rel=0.05)
    assert fits[law].r2 > 0.99
    assert min(fits, key=lambda k: fits[k].aic) == law
    # AIC as documented: n ln(RSS / n) + 2 * 3.
    f = fits[law]
    assert f.aic == pytest.approx(len(M) * math.log(f.rss / len(M)) + 6)


def test_bootstrap_over_seeds_resamples_whole_seeds() -> None:
    rng = np.random.default_rng(2)
    rows = []
    for seed in range(4):
        offset = rng.normal(0, 30)  # a seed-level effect shared by all its m
        for m in M:
            rows.append({"seed": seed, "m": m, "t_star": 100 + 80 * math.log(m) + offset})
    df = pd.DataFrame(rows)
    boot = bootstrap_fits(df, 200, seed=0)
    log_b = boot[boot["law"] == "log"]["b"]
    # Every replicate keeps whole seeds, and a seed offset does not change the slope.
    assert np.allclose(log_b, 80.0)
    assert set(boot["law"]) == set(LAWS)
    assert boot.groupby("replicate")["best"].sum().eq(1).all()


def _curves(true_t: dict[int, float], seeds: int = 3) -> pd.DataFrame:
    """Synthetic selection-job rows whose 'within' T* is known for every m."""
    steps = log_grid(50_000, 60)
    rows = []
    for m, tau in true_t.items():
        for seed in range(seeds):
            for variant in ("with_replacement", "without_replacement"):
                loss = 0.3 + 0.5 * np.exp(-steps / (tau * (1 + 0.05 * seed)))
                for t, lv in zip(steps, loss, strict=True):
                    rows.append(
                        {
                            "m": m,
                            "m_requested": m,
                            "seed": seed,
                            "variant": variant,
                            "stage": "pruned",
                            "step": t,
                            "train_loss": lv,
                            "lr": 0.5,
                        }  # fmt: skip
                    )
    return pd.DataFrame(rows)


def test_thresholds_table_and_fits_on_synthetic_curves() -> None:
    taus = {1000: 100.0, 4000: 200.0, 16000: 300.0, 64000: 400.0}  # tau grows like log m
    curves = _curves(taus)
    lam = pd.DataFrame([{"m": m, "seed": s, "lambda0": 1e-3} for m in taus for s in range(3)])
    cfg = {"tolerance": 0.05, "drop_fraction": 0.9, "interpolate": True, "bootstrap": 100,
           "ci_level": 0.95}  # fmt: skip
    th = thresholds(curves, lam, cfg)
    assert len(th) == len(taus) * 3 * 2 * len(DEFINITIONS)
    w = th[(th["definition"] == "within") & (th["variant"] == "with_replacement")]
    for r in w.itertuples():
        tau = taus[r.m] * (1 + 0.05 * r.seed)
        final = 0.3 + 0.5 * math.exp(-50_000 / tau)
        exact = tau * math.log(0.5 / (0.05 * final + final - 0.3))
        assert r.t_star == pytest.approx(exact, rel=0.02)
        assert r.t_star_normalised == pytest.approx(r.t_star * 0.5 * 1e-3)
        assert r.plateau
    summary = threshold_summary(th, cfg)
    s = summary[(summary["definition"] == "within") & (summary["variant"] == "with_replacement")]
    assert (s["t_star_ci_lo"] <= s["t_star_mean"]).all()
    assert (s["t_star_mean"] <= s["t_star_ci_hi"]).all()
    fits = fit_table(th, cfg)
    f = fits[(fits["definition"] == "within") & (fits["variant"] == "with_replacement")]
    assert set(f["law"]) == set(LAWS) and f["best"].sum() == 1
    best = f[f["best"]].iloc[0]
    assert best["law"] == "log" and best["r2"] > 0.95  # T* = tau * const, tau linear in log m
    assert (f["delta_aic"] >= 0).all()
    assert f["b_ci_lo"].le(f["b"]).all() and f["b"].le(f["b_ci_hi"]).all()


# --------------------------------------------------------------------------- NTK


def test_infinite_width_gram_closed_form_two_points() -> None:
    """Unit vectors at 60 degrees: H = [[1/2, 1/6], [1/6, 1/2]], so lambda0 = 1/3."""
    x = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    h = infinite_width_gram(x)
    assert torch.allclose(h, torch.tensor([[0.5, 1 / 6], [1 / 6, 0.5]], dtype=torch.float64))
    assert smallest_eigenvalue(h) == pytest.approx(1 / 3)
    orth = infinite_width_gram(torch.eye(3))
    assert torch.allclose(orth, 0.5 * torch.eye(3, dtype=torch.float64))


def test_empirical_ntk_hand_computed_two_neuron_case() -> None:
    """w1 = e1, w2 = e2, x1 = e1, x2 = e2, a fixed at +-1, 1/N scaling (s = 1/2):
    K_ij = s^2 (x_i.x_j) sum_r 1{w_r.x_i > 0} 1{w_r.x_j > 0} = diag(1/4, 1/4)."""
    net = TwoLayerNet(2, 2, 3, out_scale=0.5, train_output=False)
    with torch.no_grad():
        net.w.copy_(torch.eye(2))
        net.a.copy_(torch.tensor([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]]))
    x = torch.eye(2)
    k = empirical_ntk(net, x)
    assert torch.allclose(k, 0.25 * torch.eye(2, dtype=torch.float64))
    assert smallest_eigenvalue(k) == pytest.approx(0.25)


@pytest.mark.parametrize("scaling", ["mean_field", "ntk"])
@pytest.mark.parametrize("train_output", [False, True])
def test_torch_func_ntk_equals_the_written_out_kernel(scaling: str, train_output: bool) -> None:
    g = torch.Generator().manual_seed(3)
    net = build_two_layer(20, 16, 4, scaling, 1.0, g, train_output)
    x = prepare_inputs(torch.rand(12, 20, generator=g))
    k_func, k_closed = empirical_ntk(net, x), two_layer_ntk(net, x)
    assert torch.allclose(k_func, k_closed, rtol=1e-5, atol=1e-9)
    assert smallest_eigenvalue(k_func) == pytest.approx(smallest_eigenvalue(k_closed), rel=1e-5)


def test_wide_network_ntk_approaches_the_infinite_width_gram() -> None:
    """NTK scaling, fixed +-1 output weights: the first-layer kernel averages to H^inf."""
    g = torch.Generator().manual_seed(4)
    x = prepare_inputs(torch.rand(5, 6, generator=g) - 0.3)
    h = infinite_width_gram(x)
    net = build_two_layer(6, 200_000, 2, "ntk", 1.0, g, train_output=False)
    k = two_layer_ntk(net, x)
    assert torch.allclose(k, h, atol=4e-3)  # Monte Carlo error ~ 1/sqrt(N)
    assert smallest_eigenvalue(k) == pytest.approx(smallest_eigenvalue(h), abs=6e-3)
    small = build_two_layer(6, 3000, 2, "ntk", 1.0, g, train_output=False)
    assert torch.allclose(empirical_ntk(small, x), two_layer_ntk(small, x), rtol=1e-5)
