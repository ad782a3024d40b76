"""Curvature estimators mu1, mu2 and the epoch lower bound (THEORY.md B)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from prunetime import bounds, curvature
from prunetime.analysis import add_bounds
from prunetime.models import build_model, init_weights, weight_names

LAMBDA = {"a": 2.0, "b": 8.0}  # L(W) = 0.5 * sum_l lambda_l (W_l - C_l)^2, two one-weight layers
CENTRE = {"a": torch.tensor([0.5]), "b": torch.tensor([-1.0])}
NAMES = ["a", "b"]


def quadratic(w: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradient (by autograd) of the quadratic at W."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in w.items()}
    loss = sum(0.5 * LAMBDA[k] * (leaves[k] - CENTRE[k]).pow(2).sum() for k in NAMES)
    grads = torch.autograd.grad(loss, [leaves[k] for k in NAMES])
    return float(loss.detach()), dict(zip(NAMES, grads, strict=True))


def point(da: float, db: float) -> dict[str, torch.Tensor]:
    return {"a": CENTRE["a"] + da, "b": CENTRE["b"] + db}


W_STAR = point(0.0, 0.0)  # the minimiser: gradient 0, loss 0


@pytest.mark.parametrize(
    ("offset", "secant", "pl"),
    [
        # along an eigen-direction both estimators return the curvature there
        ((1.0, 0.0), 2.0, 2.0),
        ((0.0, 0.5), 8.0, 8.0),
        # W - W* = (1, 1): grad = (2, 8); secant sqrt(68) / sqrt(2), PL 68 / (2 * 5)
        ((1.0, 1.0), math.sqrt(34.0), 6.8),
        # W - W* = (-2, 1): grad = (-4, 8); loss 0.5 (2*4 + 8*1) = 8; PL 80 / 16
        ((-2.0, 1.0), math.sqrt(80.0 / 5.0), 5.0),
    ],
)
def test_estimators_on_a_hand_computed_quadratic(offset, secant, pl):
    loss_star, grad_star = quadratic(W_STAR)
    w = point(*offset)
    loss, grad = quadratic(w)
    assert curvature.secant(grad, grad_star, w, W_STAR, NAMES) == pytest.approx(secant, rel=1e-6)
    assert curvature.pl(curvature.sq_norm(grad), loss, loss_star) == pytest.approx(pl, rel=1e-6)


def test_mu_ratio_of_init_and_pruned_points_and_the_epoch_bound():
    loss_star, grad_star = quadratic(W_STAR)
    w_init, w_s = point(1.0, 1.0), point(0.0, 0.5)
    loss_i, grad_i = quadratic(w_init)
    loss_s, grad_s = quadratic(w_s)
    mu1 = curvature.pl(curvature.sq_norm(grad_i), loss_i, loss_star)  # 6.8
    mu2 = curvature.pl(curvature.sq_norm(grad_s), loss_s, loss_star)  # 8
    g_init, g_s = curvature.sq_norm(grad_i), curvature.sq_norm(grad_s)  # 68, 16
    # gamma (mu1/mu2) (g_s/g_init) t_init = 1 * 0.85 * (16/68) * 3 epochs
    got = curvature.epoch_lower_bound(g_s, g_init, 3.0, mu1, mu2)
    assert got == pytest.approx(0.85 * 16 / 68 * 3.0)
    assert curvature.epoch_lower_bound(g_s, g_init, 3.0, mu1, mu2, gamma=2.0) == pytest.approx(
        2 * got
    )
    assert got == pytest.approx(bounds.lower_bound(g_s, g_init, 3.0, 1.0, mu1 / mu2))


def test_undefined_ratios_are_nan():
    loss_star, grad_star = quadratic(W_STAR)
    assert math.isnan(curvature.secant(grad_star, grad_star, W_STAR, W_STAR, NAMES))
    assert math.isnan(curvature.pl(1.0, 0.3, 0.3))
    assert math.isnan(curvature.epoch_lower_bound(1.0, 2.0, 3.0, 1.0, math.nan))
    assert math.isnan(curvature.epoch_lower_bound(1.0, 0.0, 3.0, 1.0, 1.0))


def test_estimator_follows_the_pruning_level():
    assert curvature.estimator_for("connection") == "secant"
    assert curvature.estimator_for("node") == "pl"
    with pytest.raises(ValueError, match="level"):
        curvature.estimator_for("layer")


def test_grad_vectors_agree_with_the_bounds_gradient(split_factory):
    model = build_model("lenet300100")
    init_weights(model, "normal", 0.1, torch.Generator().manual_seed(0))
    split = split_factory(40, seed=2)
    names = weight_names(model)
    vec = curvature.grad_vectors(model, split, names)
    sq = bounds.grad_sq_norms(model, split, names)
    assert set(vec) == set(names)
    for n in names:
        assert (
            vec[n].dtype == torch.float64
            and vec[n].shape == dict(model.named_parameters())[n].shape
        )
        assert float(vec[n].pow(2).sum()) == pytest.approx(sq[n], rel=1e-9)
    assert curvature.sq_norm(vec) == pytest.approx(sum(sq.values()), rel=1e-9)


def test_epoch_bound_columns_of_the_runs_table():
    """add_bounds adds the epoch bound with the estimated ratio and fits gamma per method."""
    rows = []
    for method, mu2 in (("random", 2.0), ("clustered", 4.0)):
        for amount, epochs in ((0.3, 0.2), (0.6, 0.5), (0.9, 0.0)):
            rows.append(
                {
                    "arch": "mlp", "seed": 0, "method": method, "amount": amount, "trial": 0,
                    "g_s": 10 * amount, "g_init": 5.0, "t_init": 300, "epochs_init": 0.7,
                    "d2": 1.0, "eta": 0.01, "eps": 0.01, "iterations": round(epochs * 430),
                    "epochs": epochs, "status": "converged", "mu1": 1.0, "mu2": mu2,
                }
            )  # fmt: skip
    df = add_bounds(pd.DataFrame(rows))
    for r in df.itertuples():
        expected = (1.0 / r.mu2) * (r.g_s / 5.0) * 0.7
        assert r.lower_ep_g1 == pytest.approx(expected)
        assert r.mu_ratio_est == pytest.approx(1.0 / r.mu2)
    for method, g in df.groupby("method"):
        used = g[g["iterations"] > 0]  # the 0-epoch run admits no gamma > 0: left out
        gamma = (used["epochs"] / used["lower_ep_g1"]).min()
        assert np.allclose(g["gamma_ep_fit"], gamma), method
        assert np.allclose(g["lower_ep_fit"], gamma * g["lower_ep_g1"])
        assert (used["epochs"] >= used["lower_ep_fit"] - 1e-12).all()


@pytest.mark.parametrize("arch", ["lenet300100", "lenet5"])
def test_chunked_gradient_and_evaluation_equal_one_pass(arch):
    # 2600 samples span three evaluation chunks and eleven gradient chunks (the last ones
    # partial): the accumulated gradient and the chunked loss and accuracy must equal a
    # single full-batch pass.
    import torch.nn.functional as F

    from prunetime.data import EVAL_CHUNK, GRAD_CHUNK, Split
    from prunetime.training import evaluate

    g = torch.Generator().manual_seed(0)
    n = 2600
    assert n > 2 * EVAL_CHUNK and n % EVAL_CHUNK and n > 2 * GRAD_CHUNK and n % GRAD_CHUNK
    split = Split(torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g))
    model = build_model(arch)
    names = weight_names(model)
    got = curvature.grad_vectors(model, split, names)
    params = dict(model.named_parameters())
    ref = torch.autograd.grad(F.cross_entropy(model(split.x), split.y), [params[k] for k in names])
    for k, r in zip(names, ref, strict=True):
        assert torch.allclose(got[k], r.double(), rtol=1e-4, atol=1e-7), k
    with torch.no_grad():
        out = model(split.x)
    loss, acc = evaluate(model, split)
    assert loss == pytest.approx(float(F.cross_entropy(out, split.y)), rel=1e-5)
    assert acc == int((out.argmax(1) == split.y).sum()) / n
