"""Layer-wise error propagation and Net Deviation (THEORY.md B) against hand computations."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from prunetime import netdev
from prunetime.models import MODELS, build_model, init_weights, weight_names
from prunetime.pruning import apply_pruning, build_pruner


def _model(name: str, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    model = build_model(name)
    init_weights(model, "normal", std, torch.Generator().manual_seed(seed))
    return model


def _x(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_stages_reproduce_the_models_forward(name):
    model = _model(name)
    x = _x(5)
    ys = netdev.forward(model, x)
    assert len(ys) == len(weight_names(model)) + 1
    assert torch.equal(ys[-1], model(x))


@pytest.mark.parametrize("norm", ["fro", "spectral"])
def test_jacobian_norms_match_the_hand_computed_jacobians(norm):
    model = _model("lenet300100")
    x = _x(6)
    got = netdev.jacobian_norms(model, x, norm, chunk=4)
    assert set(got) == {"fc2", "fc3"}
    with torch.no_grad():
        y2 = torch.sigmoid(model.fc1(x.reshape(6, -1)))
        s2 = torch.sigmoid(model.fc2(y2))
        w2, w3 = model.fc2.weight, model.fc3.weight
        # dY(3)/dY(2) = diag(sigmoid'(z2)) W2 per sample; dY(4)/dY(3) = W3 for every sample
        j2 = (s2 * (1 - s2))[:, :, None] * w2[None]
        if norm == "fro":
            per_sample = j2.pow(2).sum((1, 2)).sqrt()
            j3 = float(w3.pow(2).sum().sqrt())
        else:
            per_sample = torch.linalg.svdvals(j2)[:, 0]
            j3 = float(torch.linalg.svdvals(w3)[0])
    assert got["fc2"] == pytest.approx(float(per_sample.mean()), rel=1e-5)
    assert got["fc3"] == pytest.approx(j3, rel=1e-5)


def test_jvp_norms_match_the_hand_computed_directional_derivatives():
    model = _model("lenet300100")
    x = _x(7)
    g = torch.Generator().manual_seed(3)
    delta = {k: 0.01 * torch.randn(v.shape, generator=g) for k, v in _params(model).items()}
    del delta["fc2.weight"], delta["fc2.bias"]  # a layer pruning left alone contributes 0
    got = netdev.jvp_norms(model, x, delta)
    with torch.no_grad():
        x1 = x.reshape(7, -1)
        s1 = torch.sigmoid(model.fc1(x1))
        y3 = torch.sigmoid(model.fc2(s1))
        d1 = s1 * (1 - s1) * (x1 @ delta["fc1.weight"].T + delta["fc1.bias"])
        d3 = y3 @ delta["fc3.weight"].T + delta["fc3.bias"]
    assert got["fc1"] == pytest.approx(float(d1.norm(dim=1).mean()), rel=1e-5)
    assert got["fc2"] == 0.0
    assert got["fc3"] == pytest.approx(float(d3.norm(dim=1).mean()), rel=1e-5)


def test_propagation_bound_hand_case():
    jac = {"b": 2.0, "c": 3.0}
    jvps = {"a": 1.0, "b": 10.0, "c": 100.0}
    # (||J_b|| ||J_c||) ||JVP_a|| + ||J_c|| ||JVP_b|| + ||JVP_c|| = 6 + 30 + 100
    assert netdev.propagation_bound(jac, jvps) == pytest.approx(136.0)


def test_unpruned_network_has_no_deviation():
    model = _model("lenet5_classic")
    x = _x(4)
    jac = netdev.jacobian_norms(model, x)
    out = netdev.net_deviation(model, _params(model), x, jac)
    assert out["ndev_lhs"] == 0.0 and out["ndev_rhs"] == 0.0 and out["ndev_dev"] == 0.0


@pytest.mark.parametrize(
    ("arch", "norm"),
    [
        ("lenet300100", "fro"),
        ("lenet300100", "spectral"),
        ("lenet300100_relu", "fro"),
        ("lenet300100_relu", "spectral"),
        ("lenet5_classic", "fro"),  # spectral norms of conv Jacobians: slow, same code path
    ],
)
def test_propagation_bound_holds_on_a_random_small_network(arch, norm):
    """||dY(L)|| <= RHS for connection and node pruning, small and large amounts."""
    model = _model(arch, seed=4)
    x = _x(12, seed=5)
    jac = netdev.jacobian_norms(model, x, norm)
    devs = []
    for method, amount in [("random", 0.05), ("magnitude", 0.5), ("random_node", 0.3)]:
        pruned = copy.deepcopy(model)
        apply_pruning(
            pruned, build_pruner(method), weight_names(pruned), amount,
            torch.Generator().manual_seed(6), x,
        )  # fmt: skip
        out = netdev.net_deviation(model, _params(pruned), x, jac)
        assert 0 < out["ndev_lhs"] <= out["ndev_rhs"], (method, amount, out)
        assert out["ndev_dev"] == pytest.approx(out["ndev_lhs"] - out["ndev_rhs"])
        devs.append(out["ndev_dev"])
    assert all(d < 0 for d in devs)


def test_small_perturbation_is_first_order():
    """For a tiny change the measured ||dY(L)|| matches the propagated directional derivative."""
    model = _model("lenet300100")
    x = _x(8)
    g = torch.Generator().manual_seed(9)
    pruned = {k: v + 1e-4 * torch.randn(v.shape, generator=g) for k, v in _params(model).items()}
    exact = netdev.output_deviation(model, pruned, x)
    # first order: dY(L) = J(L) ... J(l+1) JVP_l summed over l, computed with one jvp of the net
    params = _params(model)
    tangent = {k: pruned[k] - params[k] for k in params}

    def out(p):
        return netdev.forward(model, x, p)[-1]

    _, dy = torch.func.jvp(out, (params,), (tangent,))
    first_order = float(dy.norm(dim=1).mean())
    assert exact == pytest.approx(first_order, rel=1e-2)
    jac = netdev.jacobian_norms(model, x)
    assert exact <= netdev.net_deviation(model, pruned, x, jac)["ndev_rhs"]


def test_normalise_over_a_sweep():
    assert netdev.normalise([-2.0, 1.0, 4.0]) == pytest.approx([0.5, 0.25, 1.0])
    d = netdev.normalise([0.0, 0.0])
    assert all(math.isnan(v) for v in d)


def test_normalised_d_per_sweep_in_the_runs_table():
    """D = |dev| / max over amounts of the mean |dev|, separately per (arch, method)."""
    import pandas as pd

    from prunetime.analysis import add_netdev

    rows = [
        # random: mean |dev| 1.0 at 0.1 and 3.0 at 0.5 -> D 1/3 (mean), 1 (mean)
        ("a", "random", 0.1, -0.5), ("a", "random", 0.1, -1.5),
        ("a", "random", 0.5, -2.0), ("a", "random", 0.5, -4.0),
        # clustered, its own sweep: |dev| 8 then 2 -> D 1 then 0.25
        ("a", "clustered", 0.1, -8.0), ("a", "clustered", 0.5, 2.0),
    ]  # fmt: skip
    df = pd.DataFrame(rows, columns=["arch", "method", "amount", "ndev_dev"])
    out = add_netdev(df)
    assert out["D"].tolist() == pytest.approx([0.5 / 3, 1.5 / 3, 2 / 3, 4 / 3, 1.0, 0.25])
    means = out.groupby(["method", "amount"])["D"].mean()
    assert means[("random", 0.1)] == pytest.approx(1 / 3) and means[("random", 0.5)] == 1.0
    assert out["ndev_absdev"].tolist() == [0.5, 1.5, 2.0, 4.0, 8.0, 2.0]


def _relu_max_pool2d(y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.max_pool2d(torch.relu(y), 2)


@pytest.mark.parametrize("arch", ["lenet5", "lenet5_classic"])
def test_plain_forwards_pool_by_strided_maxima_with_max_pool2d_values(arch, monkeypatch):
    """Without autograd the conv stages pool by strided maxima (models.max_pool2), with
    max_pool2d where derivatives are taken: every Net Deviation quantity is bitwise the one
    max_pool2d gives everywhere, ties from zero (relu) regions included."""
    model = _model(arch, std=0.3, seed=2)
    x = _x(6, seed=3)
    x[:, :, :8] = 0.0  # blank rows: equal (zero) maxima in many windows
    pruned = copy.deepcopy(model)
    apply_pruning(
        pruned, build_pruner("random"), weight_names(pruned), 0.5,
        torch.Generator().manual_seed(4), x,
    )  # fmt: skip
    ys = netdev.reference(model, x)
    jac = netdev.jacobian_norms(model, x)
    out = netdev.net_deviation(model, _params(pruned), x, jac, ys)
    with torch.no_grad():
        y = model.conv1(x)
        assert torch.equal(netdev._relu_pool(y), _relu_max_pool2d(y))
        assert bool((torch.relu(y) == 0).any())
    monkeypatch.setattr(netdev, "_relu_pool", _relu_max_pool2d)
    # the stages hold the function itself: rebuilt with the patched one
    ref_ys = netdev.reference(model, x)
    assert all(torch.equal(a, b) for a, b in zip(ys, ref_ys, strict=True))
    assert netdev.jacobian_norms(model, x) == jac
    assert netdev.net_deviation(model, _params(pruned), x, jac) == out


def test_net_deviation_reuses_the_reference_forward_of_its_job(monkeypatch):
    """A pruning job computes the unpruned network's forward once for all trials: passing it
    gives the very numbers of computing it per trial, and the jvp and output passes then run
    no forward of the unpruned network of their own."""
    model = _model("lenet5", std=0.3, seed=5)
    x = _x(5, seed=6)
    pruned = _params(model)
    w = pruned["conv2.weight"]
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(7)) > 0.5
    pruned["conv2.weight"] = w * keep
    jac = netdev.jacobian_norms(model, x)
    ys = netdev.reference(model, x)
    calls = []
    original = netdev.reference

    def counted(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(netdev, "reference", counted)
    alone = netdev.net_deviation(model, pruned, x, jac)
    assert len(calls) == 1
    shared = netdev.net_deviation(model, pruned, x, jac, ys)
    assert len(calls) == 1
    assert shared == alone and alone["ndev_lhs"] > 0
