"""What the workflow needs while Snakemake parses it: config checks and per-job config slices.

Snakemake parses the workflow on every call, dry runs included, so nothing here imports torch
(facts about registered models and pruning methods come from :mod:`prunetime.catalog`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from prunetime import catalog
from prunetime.config import ConfigError

# --------------------------------------------------------------------------- retraining bounds


def job_config(
    config: dict[str, Any], arch_name: str, stage: str, method: str | None = None
) -> dict[str, Any]:
    """The slice of the validated config one job depends on.

    Rules pass it as a param: Snakemake reruns a job exactly when its slice changes, so
    changing eps reruns retraining but not dense training or pruning. With ``method`` the
    pruning slice holds only what that method reads: a deterministic method reads ``trials``
    only with ``repeat_deterministic`` (else it runs one), only ``random`` reads
    ``with_replacement`` and only ``clustered`` and ``greedy_node`` their options.
    """
    arch = config["architectures"][arch_name]
    out: dict[str, Any] = {
        "data": {"normalize": config["data"]["normalize"]},
        "eval": config["eval"],
        "architectures": {arch_name: {"model": arch["model"]}},
    }
    sel = out["architectures"][arch_name]
    pcfg = config["pruning"]
    if stage == "dense":
        sel.update(init=arch["init"], train=arch["train"])
    elif stage == "netdev":
        out["pruning"] = {"data": pcfg["data"]}
        out["netdev"] = config["netdev"]
    elif stage == "prune":
        keys = ["layers", "data"]
        stoch = catalog.stochastic(method) if method is not None else None
        if stoch is None or stoch or pcfg["repeat_deterministic"]:
            keys.append("trials")
        if not stoch and pcfg["repeat_deterministic"]:
            keys.append("repeat_deterministic")  # only when set: the default slice is as before
        if method in (None, "random"):
            keys.append("with_replacement")
        for name in ("clustered", "greedy_node"):
            if method in (None, name):
                keys.append(name)
        out["pruning"] = {k: pcfg[k] for k in sorted(keys)}
        out["netdev"] = config["netdev"]
    elif stage == "retrain":
        sel["retrain"] = arch["retrain"]
        # The screen changes no count, only which checks' losses the curves hold: on (the
        # default) the slice is as before, so finished results are not rerun.
        out["retrain"] = {
            k: v for k, v in config["retrain"].items() if k != "screen" or v is not True
        }
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return out


def fmt_amount(amount: float) -> str:
    """Canonical text of a pruning amount, used in file names and tables."""
    return f"{amount:g}"


def job_priority(config: dict[str, Any], arch_name: str, method: str, amount: float) -> int:
    """Scheduling priority of a prune or retrain job: its retraining's expected relative cost.

    Snakemake starts the ready jobs with the highest priority first. On a few cores, a long
    retraining job that happens to start last runs alone while the other cores idle (in a
    section A run the LeNet-300-100 random s = 0.9 job, 14 of its 48 minutes, started after
    26; other jobs still filled the second core, but a later start would have left a tail).
    The cost grows with the retraining runs of the job (``trials`` for a stochastic or repeated
    method, else one), the iteration cap and the amount (the larger, the longer retraining
    takes, up to capped runs at the top).
    """
    runs = retrain_runs(config["pruning"], catalog.stochastic(method))
    cap = config["architectures"][arch_name]["retrain"]["max_iters"]
    return round(runs * cap * float(amount))


def gate_priority(config: dict[str, Any]) -> int:
    """Scheduling priority of the jobs every prune job of an architecture waits for (dense
    training, the Jacobians): above every prune and retrain job's.

    Otherwise a ready prune job of one architecture takes a free core before the other
    architecture's Jacobian job, and once the first architecture's jobs run out, that
    architecture's jobs all wait on it while a core idles (10 of the quick preset's 134 s
    with ``--cores 2``).
    """
    amounts = config["pruning"]["amounts"]
    costs = [job_priority(config, a, m, s) for a, m in job_combos(config) for s in amounts]
    return 1 + max(costs, default=0)


def retrain_runs(pcfg: dict[str, Any], stochastic: bool | None) -> int:
    """Retraining runs of one (architecture, seed, method, amount): ``trials`` for a stochastic
    method or with ``repeat_deterministic``, else one. ``pcfg`` is the config's ``pruning``
    section or a prune job's slice of it (which holds only the keys the method reads)."""
    if stochastic or pcfg.get("repeat_deterministic"):
        return int(pcfg.get("trials", 1))
    return 1


def method_applies(config: dict[str, Any], arch_name: str, method_name: str) -> bool:
    """Whether ``method_name`` can prune architecture ``arch_name`` (greedy_node: FC only)."""
    return catalog.applies(method_name, config["architectures"][arch_name]["model"])


def job_combos(config: dict[str, Any]) -> list[tuple[str, str]]:
    """The (architecture, method) pairs the study runs: every pair a method applies to."""
    return [
        (arch, method)
        for arch in config["architectures"]
        for method in config["pruning"]["methods"]
        if method_applies(config, arch, method)
    ]


# --------------------------------------------------------------------------- gates

NETWORK_KEYS = {
    "resmlp": {"width": 64, "hidden": 128, "blocks": 4},
    "resnet": {"width": 16, "depth": 8},
}


def gates_job_config(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The config slice one gates job depends on (a Snakemake param, so edits rerun it)."""
    g = config["gates"]
    common = {
        "data": {"normalize": config["data"]["normalize"], "dataset": config["data"]["dataset"]},
        "eval": config["eval"],
        "gates": {k: g[k] for k in ("networks", "train_size", "train")},
    }
    if stage in ("train", "dense"):
        if stage == "train":
            common["gates"].update(complexity=g["complexity"], gates=g["gates"])
        return common
    if stage == "magnitude":
        common["gates"]["magnitude"] = g["magnitude"]
        return common
    if stage in ("summary", "report"):
        return {"gates": {"networks": g["networks"]}, "report": config["report"]}
    raise ValueError(f"unknown gates stage {stage!r}")


def gates_params_json(config: dict[str, Any], stage: str) -> Callable[[Any], str]:
    return lambda _wildcards: json.dumps(gates_job_config(config, stage), sort_keys=True)


def fmt_lambda(lam: float) -> str:
    """Canonical text of a lambda in file names and tables."""
    return f"{lam:g}"


def check_gates_config(config: dict[str, Any]) -> None:
    """Consistency rules the schema cannot express; raise ConfigError naming the key."""
    g = config["gates"]
    if g["magnitude"]["enabled"] and "combined" not in g["variants"]:
        raise ConfigError(
            "config key 'gates.magnitude.enabled': true needs variant 'combined' in "
            f"gates.variants={g['variants']} (its parameter count is the budget)"
        )
    if g["magnitude"]["enabled"] and not g["dense"]:
        raise ConfigError(
            "config key 'gates.magnitude.enabled': true needs gates.dense: true "
            "(the dense network is what gets pruned)"
        )
    lams = [fmt_lambda(x) for x in g["lambdas"]]
    if len(set(lams)) != len(lams):
        raise ConfigError(f"config key 'gates.lambdas': {g['lambdas']} has duplicates")
    n = g["train_size"]
    if n is not None and g["train"]["batch_size"] > n:
        raise ConfigError(
            f"config key 'gates.train.batch_size': {g['train']['batch_size']} exceeds "
            f"gates.train_size={n}"
        )
    for name, spec in g["networks"].items():
        allowed = NETWORK_KEYS[spec["model"]]
        extra = sorted(set(spec) - set(allowed) - {"model"})
        if extra:
            raise ConfigError(
                f"config key 'gates.networks.{name}': {extra} do not apply to model "
                f"{spec['model']!r}; allowed: {sorted(allowed)}"
            )
        for key, default in allowed.items():
            spec.setdefault(key, default)
        if spec["model"] == "resnet" and (spec["depth"] - 2) % 6:
            raise ConfigError(
                f"config key 'gates.networks.{name}.depth': {spec['depth']} is not 6n + 2 "
                "(allowed: 8, 14, 20, ...)"
            )
    if config["data"]["dataset"] == "cifar10" and config["data"]["normalize"] != "unit":
        raise ConfigError(
            "config key 'data.normalize': 'standardize' uses MNIST statistics; "
            "use 'unit' with dataset 'cifar10'"
        )


# --------------------------------------------------------------------------- pretrain


def pretrain_job_config(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The slice of the validated config one pretrain job depends on (a Snakemake param).

    m and the seed come from the job's wildcards, so adding an m adds only that m's jobs;
    greedy, fine-tune and NTK settings reach only the selection jobs.
    """
    p = config["pretrain"]
    out: dict[str, Any] = {
        "data": {"normalize": config["data"]["normalize"]},
        "pretrain": {"model": p["model"], "train": p["train"]},
    }
    if stage == "train":
        out["pretrain"]["checkpoints"] = p["checkpoints"]
    elif stage == "prune":
        out["pretrain"].update(greedy=p["greedy"], finetune=p["finetune"], ntk=p["ntk"])
    elif stage == "threshold":
        out = {"pretrain": {"threshold": p["threshold"]}}
    else:
        raise ValueError(f"unknown pretrain stage {stage!r}")
    return out


def pretrain_params_json(config: dict[str, Any], stage: str) -> Callable[[Any], str]:
    """A Snakemake param function: the job's config slice as JSON, built only for DAG jobs."""
    return lambda _wildcards: json.dumps(pretrain_job_config(config, stage), sort_keys=True)


def check_pretrain_config(config: dict[str, Any]) -> None:
    """Consistency rules the schema cannot express; raise ConfigError naming the key."""
    p = config["pretrain"]
    variants = p["greedy"]["variants"]
    if p["threshold"]["variant"] not in variants:
        raise ConfigError(
            f"config key 'pretrain.threshold.variant': {p['threshold']['variant']!r} is not "
            f"among pretrain.greedy.variants {variants}"
        )
    if "without_replacement" in variants and p["greedy"]["size"] > p["model"]["width"]:
        raise ConfigError(
            f"config key 'pretrain.greedy.size': {p['greedy']['size']} exceeds "
            f"pretrain.model.width={p['model']['width']} (impossible without replacement)"
        )
    small = min(p["m"])
    if p["train"]["method"] == "sgd" and p["train"]["batch_size"] > small:
        raise ConfigError(
            f"config key 'pretrain.train.batch_size': {p['train']['batch_size']} exceeds the "
            f"smallest m={small}"
        )
    if p["ntk"]["subsample"] > small:
        raise ConfigError(
            f"config key 'pretrain.ntk.subsample': {p['ntk']['subsample']} exceeds the "
            f"smallest m={small}"
        )
    if p["checkpoints"]["first"] > p["train"]["steps"]:
        raise ConfigError(
            f"config key 'pretrain.checkpoints.first': {p['checkpoints']['first']} exceeds "
            f"pretrain.train.steps={p['train']['steps']}"
        )
