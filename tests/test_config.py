"""Config loading, defaults and validation messages that name the offending key."""

from __future__ import annotations

import copy

import pytest
import yaml

from prunetime.config import ConfigError, load_config, load_schema, validate_config


def _minimal() -> dict:
    return {"architectures": {"a": {"model": "lenet300100"}}}


def _arch(**sections) -> dict:
    return {"architectures": {"a": {"model": "lenet300100", **sections}}}


@pytest.mark.parametrize("name", ["config.yaml", "quick.yaml", "section_a.yaml"])
def test_shipped_configs_load(repo_root, name):
    raw = yaml.safe_load((repo_root / "config" / name).read_text())
    cfg = load_config(repo_root / "config" / name)
    assert set(cfg["architectures"]) == set(raw["architectures"]) == {"lenet300100", "lenet5"}
    assert cfg["architectures"]["lenet5"]["model"] == "lenet5"
    # values written in the file are kept as written
    assert cfg["pruning"]["amounts"] == raw["pruning"]["amounts"]
    assert (
        cfg["architectures"]["lenet5"]["retrain"]["eps"]
        == raw["architectures"]["lenet5"]["retrain"]["eps"]
    )
    # keys the file leaves out are filled (momentum comes from the shared optimizer block)
    assert cfg["architectures"]["lenet300100"]["retrain"]["momentum"] == 0.0
    assert cfg["eval"]["size"] <= cfg["data"]["n_val"]


def test_paper_preset_matches_theory(repo_root):
    """THEORY.md section A: the paper protocol."""
    cfg = load_config(repo_root / "config" / "config.yaml")
    lenet = cfg["architectures"]["lenet300100"]
    assert lenet["init"] == {"scheme": "normal", "std": 0.1}
    assert (lenet["train"]["optimizer"], lenet["train"]["lr"], lenet["train"]["batch_size"]) == (
        "adam",
        0.01,
        128,
    )
    assert lenet["train"]["steps"] == 500 and lenet["retrain"]["eps"] == 0.01
    lenet5 = cfg["architectures"]["lenet5"]
    assert lenet5["init"]["std"] == 1.0 and lenet5["train"]["steps"] == 1000
    assert lenet5["retrain"]["eps"] == 1.0 and lenet5["retrain"]["max_iters"] == 150
    assert cfg["pruning"]["amounts"] == pytest.approx([0.1 * i for i in range(1, 10)])
    assert cfg["pruning"]["trials"] == 50 and cfg["data"]["n_val"] == 5000


def test_section_a_preset_is_the_paper_preset_with_connection_pruning_only(repo_root):
    """config/section_a.yaml: THEORY.md section A's methods, everything else as the paper's."""
    paper = load_config(repo_root / "config" / "config.yaml")
    part = load_config(repo_root / "config" / "section_a.yaml")
    assert part["pruning"]["methods"] == ["random", "magnitude"]
    assert part["study"] != paper["study"]  # its own results folder and report
    # 50 retraining runs of magnitude's one mask too: 2 x 2 x 9 x 50 = 1800 runs
    assert part["pruning"]["repeat_deterministic"] and not paper["pruning"]["repeat_deterministic"]
    for cfg in (paper, part):
        cfg.pop("study")
        cfg["pruning"].pop("methods")
        cfg["pruning"].pop("repeat_deterministic")
        for method in ("clustered", "greedy_node"):
            cfg["pruning"].pop(method, None)
    assert part == paper


def test_defaults_filled_for_minimal_config():
    schema = load_schema()
    cfg = validate_config(_minimal())
    arch = cfg["architectures"]["a"]
    assert arch["init"] == {"scheme": "normal", "std": 0.1}
    optim = schema["$defs"]["optim"]["properties"]
    for stage in ("train", "retrain"):
        for key in ("optimizer", "lr", "momentum", "batch_size"):
            assert arch[stage][key] == optim[key]["default"], (stage, key)
    assert arch["train"]["steps"] == 500 and arch["train"]["log_every"] == 10
    assert arch["retrain"]["eps"] == 0.01 and arch["retrain"]["max_iters"] == 1000
    assert cfg["data"] == {
        "dataset": "mnist",
        "mirror": None,
        "n_val": 5000,
        "split_seed": 0,
        "normalize": "unit",
    }
    assert cfg["eval"] == {"size": 1000, "seed": 0}
    assert cfg["seeds"] == [0]
    assert cfg["pruning"]["methods"] == ["random", "magnitude"]
    assert cfg["pruning"]["amounts"] == pytest.approx([0.1 * i for i in range(1, 10)])
    assert cfg["pruning"]["layers"] == "all" and cfg["pruning"]["with_replacement"] is False
    assert cfg["retrain"] == {
        "masked": True,
        "check_every": 1,
        "screen": True,
        "ensemble": "auto",
    }
    assert cfg["bounds"] == {"gamma_quantile": 0.0, "mu_ratio": 1.0, "ci_level": 0.95}
    assert (cfg["device"], cfg["threads"], cfg["results_dir"]) == ("auto", 1, "results")


def test_defaults_do_not_override_given_values_and_are_not_shared():
    cfg = validate_config(_arch(retrain={"eps": 0.5}))
    assert cfg["architectures"]["a"]["retrain"]["eps"] == 0.5
    assert cfg["architectures"]["a"]["retrain"]["lr"] == 0.01
    # mutating one filled default must not leak into the next validation
    cfg["pruning"]["amounts"].append(0.95)
    assert 0.95 not in validate_config(_minimal())["pruning"]["amounts"]


INVALID = [
    ("amount above 1", {"pruning": {"amounts": [0.5, 1.5]}}, "pruning.amounts.1"),
    ("amount 0", {"pruning": {"amounts": [0]}}, "pruning.amounts.0"),
    ("empty amounts", {"pruning": {"amounts": []}}, "pruning.amounts"),
    ("duplicate amounts", {"pruning": {"amounts": [0.5, 0.5]}}, "pruning.amounts"),
    ("trials 0", {"pruning": {"trials": 0}}, "pruning.trials"),
    ("unknown method", {"pruning": {"methods": ["random", "lottery"]}}, "pruning.methods.1"),
    ("layers as a string", {"pruning": {"layers": "fc1"}}, "pruning.layers"),
    ("unknown layer", {"pruning": {"layers": ["fc1", "conv9"]}}, "pruning.layers"),
    ("negative eps", _arch(retrain={"eps": -0.1}), "architectures.a.retrain.eps"),
    ("lr 0", _arch(train={"lr": 0}), "architectures.a.train.lr"),
    ("batch size 0", _arch(retrain={"batch_size": 0}), "architectures.a.retrain.batch_size"),
    ("momentum 1", _arch(retrain={"momentum": 1.0}), "architectures.a.retrain.momentum"),
    (
        "unknown optimizer",
        _arch(retrain={"optimizer": "rmsprop"}),
        "architectures.a.retrain.optimizer",
    ),
    ("unknown train key", _arch(train={"stepz": 3}), "stepz"),
    ("unknown top-level key", {"bogus": 1}, "bogus"),
    ("eval size above n_val", {"eval": {"size": 6000}}, "eval.size"),
    ("results_dir outside", {"results_dir": "../x"}, "results_dir"),
    ("results_dir absolute", {"results_dir": "/tmp/x"}, "results_dir"),
    ("data_dir outside", {"data_dir": "data/../../x"}, "data_dir"),
    ("bad device", {"device": "tpu"}, "device"),
    ("gamma quantile 1", {"bounds": {"gamma_quantile": 1.0}}, "bounds.gamma_quantile"),
    ("no architectures", {"architectures": {}}, "architectures"),
    ("n_val too large", {"data": {"n_val": 60000}}, "data.n_val"),
]


@pytest.mark.parametrize(("case", "change", "key"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_config_names_the_key(case, change, key):
    cfg = _minimal()
    cfg.update(copy.deepcopy(change))
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert key in str(info.value), str(info.value)


def test_unknown_model_lists_allowed_values():
    with pytest.raises(ConfigError) as info:
        validate_config({"architectures": {"a": {"model": "resnet"}}})
    msg = str(info.value)
    assert "architectures.a.model" in msg and "resnet" in msg
    for allowed in ("lenet300100", "lenet300100_relu", "lenet5", "lenet5_classic"):
        assert allowed in msg


def test_unknown_layer_lists_allowed_layers():
    with pytest.raises(ConfigError) as info:
        validate_config({**_minimal(), "pruning": {"layers": ["fc1", "conv9"]}})
    msg = str(info.value)
    assert "conv9" in msg and "fc3.weight" in msg
    # names with and without '.weight' are both fine
    cfg = validate_config({**_minimal(), "pruning": {"layers": ["fc1", "fc2.weight"]}})
    assert cfg["pruning"]["layers"] == ["fc1", "fc2.weight"]


def test_every_problem_is_reported():
    cfg = {**_minimal(), "pruning": {"amounts": [1.5], "trials": 0}, "device": "tpu"}
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    msg = str(info.value)
    assert "3 problem(s)" in msg
    for key in ("pruning.amounts.0", "pruning.trials", "'device'"):
        assert key in msg


def test_missing_architectures_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="architectures"):
        validate_config({})
    with pytest.raises(ConfigError, match="mapping"):
        validate_config([1, 2])
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="architectures"):
        load_config(empty)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_load_config_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "architectures:\n  small:\n    model: lenet5_classic\n"
        "pruning:\n  amounts: [0.25, 0.75]\n  trials: 3\n"
    )
    cfg = load_config(path)
    assert cfg["architectures"]["small"]["model"] == "lenet5_classic"
    assert cfg["pruning"]["amounts"] == [0.25, 0.75] and cfg["pruning"]["trials"] == 3
    path.write_text("architectures:\n  small:\n    model: lenet5_classic\npruning:\n  trials: -1\n")
    with pytest.raises(ConfigError, match="pruning.trials"):
        load_config(path)


@pytest.mark.parametrize(
    ("change", "key", "get"),
    [
        ({"pruning": {"trials": 2.0}}, "pruning.trials", lambda c: c["pruning"]["trials"]),
        (
            _arch(train={"steps": 30.0}),
            "architectures.a.train.steps",
            lambda c: c["architectures"]["a"]["train"]["steps"],
        ),
        ({"eval": {"size": 10.0}}, "eval.size", lambda c: c["eval"]["size"]),
    ],
)
def test_integer_keys_reject_floats(change, key, get):
    """Integer keys feed range() and slicing (trials, steps, eval.size): a float such as
    2.0 must be rejected by validation (or converted), not crash a job later.
    JSON Schema counts 2.0 as an integer, so validation passes it through unchanged and
    study.run_prune's range(trials) / eval_indices' slicing raise TypeError."""
    cfg = _minimal()
    cfg.update(copy.deepcopy(change))
    try:
        out = validate_config(cfg)
    except ConfigError as exc:
        assert key in str(exc)
    else:
        assert type(get(out)) is int, f"{key} validated as {get(out)!r}"
