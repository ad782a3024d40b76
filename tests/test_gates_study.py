"""Gated training on a real MNIST subset: lambda's effect, removal during training, rounding,
the difference estimator, saved models, the magnitude budget and the config checks."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from prunetime.config import ConfigError, validate_config
from prunetime.data import Split
from prunetime.gates import ResMLP, ResNet, count_flops, count_params
from prunetime.gates_study import (
    _final_metrics,
    load_model,
    magnitude_amount,
    save_model,
    train_gated,
)
from prunetime.plan import check_gates_config

REPO = Path(__file__).resolve().parents[1]
CFG = {
    "gates": {
        "train": {
            "optimizer": "adam",
            "lr": 0.005,
            "momentum": 0.9,
            "weight_decay": 0.0,
            "batch_size": 32,
            "epochs": 3,
        },
        "complexity": {"flops_weight": 0.5, "layer_weight": 0.0},
        "gates": {
            "estimator": "ste",
            "theta_init": 1.0,
            "theta_lr": 1.0,
            "threshold": 0.05,
            "patience": 2,
            "check_every": 8,
        },
    }
}


@pytest.fixture(scope="module")
def mnist_small(prepared_mnist) -> tuple[Split, Split]:
    blob = torch.load(prepared_mnist["path"], weights_only=True)

    def split(x: torch.Tensor, y: torch.Tensor) -> Split:
        return Split(x.float().div(255).unsqueeze(1), y)

    return split(blob["train_x"][:1024], blob["train_y"][:1024]), split(
        blob["val_x"][:500], blob["val_y"][:500]
    )


_RUNS: dict[tuple[str, float], tuple] = {}


def _run(data, variant: str, lam: float, cfg: dict = CFG):
    """One tiny training run; runs with the default settings are shared between tests."""
    key = (variant, lam)
    if cfg is CFG and key in _RUNS:
        return _RUNS[key]
    torch.manual_seed(0)
    model = ResMLP((1, 28, 28), width=16, hidden=32, blocks=3)
    hist = train_gated(model, *data, cfg, variant, lam, torch.Generator().manual_seed(0))
    out = model, hist, _final_metrics(model, data[1], data[1])
    if cfg is CFG:
        _RUNS[key] = out
    return out


def test_lambda_zero_prunes_nothing_and_complexity_falls_with_lambda(mnist_small) -> None:
    params, flops = [], []
    for lam in (0.0, 6.0, 18.0):
        model, hist, m = _run(mnist_small, "unit", lam)
        params.append(m["params"])
        flops.append(m["flops"])
        if lam == 0:
            assert m["params"] == hist["params_full"] and m["flops"] == hist["flops_full"]
            assert sum(hist["removed"].values()) == 0
        assert m["params"] == count_params(model) and m["thetas_binary"]
    assert params[0] > params[1] > params[2]
    assert flops[0] > flops[1] > flops[2]
    _, _, comb = _run(mnist_small, "combined", 6.0)
    assert comb["params"] < params[0]


def test_removal_during_training_shrinks_every_later_epoch(mnist_small) -> None:
    model, hist, _ = _run(mnist_small, "unit", 18.0)
    assert hist["removed"]["units_training"] > 0  # removed while training, not only at the end
    ep_flops = [e["flops"] for e in hist["epochs"]]
    ep_params = [e["params"] for e in hist["epochs"]]
    assert ep_flops == sorted(ep_flops, reverse=True) and ep_flops[-1] < hist["flops_full"]
    assert ep_params == sorted(ep_params, reverse=True)
    # the expected cost at the end of each epoch never exceeds the counted current network
    assert all(e["expected_flops"] <= e["flops"] + 1e-6 for e in hist["epochs"])
    # trajectories: every gated structure at step 0, ids stable over removals
    first = [r for r in hist["thetas"] if r["step"] == 0 and r["kind"] == "unit"]
    assert len(first) == 3 * 32 and all(r["theta"] == 1.0 for r in first)
    # deterministic at the end: training mode with resampling gives the eval function
    x = mnist_small[1].x[:20]
    model.eval()
    ref = model(x)
    model.train()
    model.resample()
    torch.testing.assert_close(model(x), ref)


def test_difference_estimator_trains_and_removes_blocks(mnist_small) -> None:
    cfg = copy.deepcopy(CFG)
    cfg["gates"]["gates"]["estimator"] = "difference"
    cfg["gates"]["train"]["epochs"] = 2
    cfg["gates"]["complexity"]["layer_weight"] = 1.0
    _, hist, m = _run(mnist_small, "layer", 6.0, cfg)
    assert m["blocks_kept"] < 3 and m["units_kept"] == 32 * m["blocks_kept"]
    assert hist["removed"]["blocks_training"] + hist["removed"]["blocks_rounding"] > 0
    assert m["eval_acc"] > 0.5


def test_saved_pruned_model_reloads_with_same_function(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ResNet((1, 12, 12), depth=8, width=4)
    with torch.no_grad():
        model.blocks[0].units.theta[:2] = 0.0
        model.blocks[1].gate.theta.fill_(0.0)
    from prunetime.gates import round_gates

    round_gates(model)
    spec = {"model": "resnet", "depth": 8, "width": 4}
    save_model(tmp_path / "m.pt", model, spec)
    back = load_model(tmp_path / "m.pt")
    x = torch.randn(3, 1, 12, 12)
    model.eval()
    back.eval()
    torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    assert count_flops(back, back.input_shape) == count_flops(model, model.input_shape)


def test_magnitude_amount_meets_the_parameter_budget() -> None:
    from prunetime.pruning import build_pruner

    torch.manual_seed(0)
    model = ResMLP((1, 8, 8), width=16, hidden=24, blocks=2)
    total = count_params(model)
    budget = total // 3
    amount, layers = magnitude_amount(model, budget)
    masks = build_pruner("magnitude").masks(model, layers, amount, torch.Generator())
    kept = total - sum(int((~m).sum()) for m in masks.values())
    assert abs(kept - budget) <= len(layers)  # per-tensor rounding only
    assert magnitude_amount(model, total + 5)[0] == 0.0


def _gates_cfg() -> dict:
    return yaml.safe_load((REPO / "config" / "gates_quick.yaml").read_text())


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda g: g["networks"].update(r={"model": "resnet", "depth": 10}), "6n \\+ 2"),
        (lambda g: g["networks"].update(r={"model": "resnet", "hidden": 3}), "do not apply"),
        (lambda g: g.update(variants=["unit"]), "needs variant 'combined'"),
        (lambda g: g.update(dense=False), "needs gates.dense"),
        (lambda g: g.update(lambdas=[1.0, 1]), "duplicates"),
        (lambda g: g.update(train_size=10), "batch_size"),
    ],
)
def test_gates_config_consistency_errors(edit, match) -> None:
    cfg = _gates_cfg()
    edit(cfg["gates"])
    validate_config(cfg)
    with pytest.raises(ConfigError, match=match):
        check_gates_config(cfg)


def test_gates_schema_fills_defaults_and_names_bad_keys() -> None:
    cfg = validate_config({"gates": {"networks": {"m": {"model": "resmlp"}}}})
    check_gates_config(cfg)
    assert cfg["architectures"] == {}
    assert cfg["gates"]["networks"]["m"] == {
        "model": "resmlp",
        "width": 64,
        "hidden": 128,
        "blocks": 4,
    }
    assert cfg["gates"]["complexity"] == {"flops_weight": 0.5, "layer_weight": 0.5}
    bad = _gates_cfg()
    bad["gates"]["complexity"]["flops_weight"] = 1.5
    with pytest.raises(ConfigError, match="gates.complexity.flops_weight"):
        validate_config(bad)
    bad = _gates_cfg()
    bad["gates"]["gates"]["estimator"] = "reinforce"
    with pytest.raises(ConfigError, match="allowed values"):
        validate_config(bad)


def test_cifar10_only_with_the_gates_study() -> None:
    cfg = _gates_cfg()
    cfg["data"]["dataset"] = "cifar10"
    check_gates_config(validate_config(copy.deepcopy(cfg)))
    cfg["data"]["normalize"] = "standardize"
    with pytest.raises(ConfigError, match="data.normalize"):
        check_gates_config(validate_config(cfg))
    lenet = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    lenet["data"]["dataset"] = "cifar10"
    with pytest.raises(ConfigError, match="data.dataset"):
        validate_config(lenet)


def test_resnet_gated_training_removes_filters_and_blocks(split_factory) -> None:
    """A tiny ResNet-8 on synthetic data: filters and blocks go during training, the optimizer
    keeps working on the smaller tensors, and the end result is deterministic."""
    cfg = copy.deepcopy(CFG)
    cfg["gates"]["train"]["epochs"] = 2
    cfg["gates"]["complexity"]["layer_weight"] = 0.5
    cfg["gates"]["gates"]["check_every"] = 2
    train, evalset = split_factory(128, 0, (1, 12, 12)), split_factory(64, 1, (1, 12, 12))
    torch.manual_seed(0)
    model = ResNet((1, 12, 12), depth=8, width=4)
    hist = train_gated(model, train, evalset, cfg, "combined", 30.0, torch.Generator())
    removed = hist["removed"]
    assert removed["units_training"] + removed["blocks_training"] > 0
    m = _final_metrics(model, evalset, evalset)
    assert m["flops"] < hist["flops_full"] and m["thetas_binary"]
    assert m["flops"] == count_flops(model, model.input_shape)
