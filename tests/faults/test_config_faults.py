"""Invalid configs: each fails validation before any job, naming the key and what is allowed."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from prunetime.config import ConfigError, validate_config

REPO = Path(__file__).resolve().parents[2]
QUICK = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())


def arch(c: dict[str, Any]) -> dict[str, Any]:
    return c["architectures"]["lenet300100"]


def setter(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(c: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[last] = value

    return edit


def deleter(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(c: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = c
        for p in parents:
            node = node[p]
        del node[last]

    return edit


# (id, edit, substrings the message must contain: the key, and what is allowed)
CASES: list[tuple[str, Callable[[dict[str, Any]], None], list[str]]] = [
    ("amount>1", setter("pruning.amounts", [0.3, 1.5]), ["pruning.amounts.1", "maximum of 1"]),
    ("amount=0", setter("pruning.amounts", [0.0]), ["pruning.amounts.0", "minimum of 0"]),
    ("amount<0", setter("pruning.amounts", [-0.2]), ["pruning.amounts.0", "minimum of 0"]),
    ("amount str", setter("pruning.amounts", ["half"]), ["pruning.amounts.0", "number"]),
    ("amounts empty", setter("pruning.amounts", []), ["pruning.amounts", "non-empty"]),
    ("amounts dup", setter("pruning.amounts", [0.5, 0.5]), ["pruning.amounts", "non-unique"]),
    ("methods empty", setter("pruning.methods", []), ["pruning.methods", "non-empty"]),
    (
        "unknown method",
        setter("pruning.methods", ["oracle"]),
        ["pruning.methods.0", "allowed values"],
    ),
    ("trials 0", setter("pruning.trials", 0), ["pruning.trials", "minimum of 1"]),
    ("trials float", setter("pruning.trials", 2.0), ["pruning.trials", "integer"]),
    ("unknown arch model", lambda c: arch(c).update(model="resnet1000"), ["model", "lenet300100"]),
    ("eps 0", lambda c: arch(c)["retrain"].update(eps=0), ["retrain.eps", "minimum of 0"]),
    ("eps negative", lambda c: arch(c)["retrain"].update(eps=-0.01), ["retrain.eps", "minimum"]),
    ("lr 0", lambda c: arch(c)["train"].update(lr=0), ["train.lr", "minimum of 0"]),
    ("lr negative", lambda c: arch(c)["retrain"].update(lr=-1), ["retrain.lr", "minimum"]),
    ("steps str", lambda c: arch(c)["train"].update(steps="many"), ["train.steps", "integer"]),
    ("batch 0", lambda c: arch(c)["train"].update(batch_size=0), ["train.batch_size", "minimum"]),
    (
        "optimizer",
        lambda c: arch(c)["train"].update(optimizer="lbfgs"),
        ["train.optimizer", "adam"],
    ),
    ("init scheme", lambda c: arch(c)["init"].update(scheme="xavier"), ["init.scheme", "normal"]),
    ("unknown top key", setter("learning_rate", 0.1), ["learning_rate", "allowed keys"]),
    ("unknown nested key", setter("pruning.amount", 0.5), ["'amount'", "allowed keys"]),
    ("unknown arch key", lambda c: arch(c).update(epochs=3), ["epochs", "allowed keys"]),
    ("missing architectures", deleter("architectures"), ["architectures", "required"]),
    ("missing model", lambda c: arch(c).pop("model"), ["model", "required"]),
    ("no architectures", setter("architectures", {}), ["architectures", "non-empty"]),
    ("bad arch name", setter("architectures", {"a/b": {"model": "lenet5"}}), ["a/b", "match"]),
    ("device", setter("device", "tpu"), ["device", "auto"]),
    ("dataset", setter("data.dataset", "cifar100"), ["data.dataset", "mnist"]),
    ("normalize", setter("data.normalize", "zscore"), ["data.normalize", "unit"]),
    ("eval bigger than val", setter("eval.size", 6000), ["eval.size", "n_val"]),
    ("seeds empty", setter("seeds", []), ["seeds", "non-empty"]),
    ("seeds negative", setter("seeds", [-1]), ["seeds.0", "minimum"]),
    ("threads 0", setter("threads", 0), ["threads", "minimum of 1"]),
    ("masked str", setter("retrain.masked", "yes"), ["retrain.masked", "boolean"]),
    ("quantile 1", setter("bounds.gamma_quantile", 1.0), ["bounds.gamma_quantile", "maximum"]),
    ("layers unknown", setter("pruning.layers", ["fc9"]), ["pruning.layers", "fc1.weight"]),
    ("layers empty", setter("pruning.layers", []), ["pruning.layers", "'all'"]),
    (
        "with_replacement without random",
        lambda c: c["pruning"].update(methods=["magnitude"], with_replacement=True),
        ["pruning.with_replacement", "random"],
    ),
    ("results_dir escapes", setter("results_dir", "../elsewhere"), ["results_dir", "relative"]),
    ("results_dir absolute", setter("results_dir", "/tmp/x"), ["results_dir"]),
    ("data_dir escapes", setter("data_dir", "data/../../x"), ["data_dir", "inside"]),
    ("study with slash", setter("study", "a/../../b"), ["study", "match"]),
    ("report format", setter("report.format", "jpg"), ["report.format", "png"]),
]


@pytest.mark.parametrize(("edit", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_config_is_refused_naming_key(
    edit: Callable[[dict[str, Any]], None], expected: list[str]
) -> None:
    cfg = copy.deepcopy(QUICK)
    edit(cfg)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    message = str(info.value)
    for part in expected:
        assert part in message, f"{part!r} not in: {message}"


def test_at_least_twenty_faults() -> None:
    assert len(CASES) >= 20


def test_the_presets_themselves_are_valid() -> None:
    for name in ("config.yaml", "quick.yaml"):
        validate_config(yaml.safe_load((REPO / "config" / name).read_text()))
