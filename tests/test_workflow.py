"""End to end: the quick preset through Snakemake on real MNIST, then caching behaviour.

The quick run (fixture `quick_run` of conftest.py) happens once per test session in a scratch
copy of the project (as a user would run it from a checkout); the rerun tests only dry-run
against its finished state.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import yaml
from workflow_helpers import QUICK, REPO, job_counts, project_copy, snakemake, variant_config

from prunetime import bounds
from prunetime.io import read_json
from prunetime.pruning import PRUNERS


def write_config(workdir: Path, name: str, edit) -> str:
    return variant_config(workdir, QUICK, name, edit)


def test_quick_run_produces_tables_and_figures(quick_run: Path) -> None:
    res = quick_run / "results" / "quick"
    cfg = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    figures = (
        "iterations_vs_sparsity", "accuracy_vs_sparsity", "dense_training", "netdev_vs_amount",
        "accuracy_vs_amount", "epochs_vs_amount",
    )  # fmt: skip
    for fig in figures:
        path = res / "figures" / f"{fig}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert (res / "summary.md").stat().st_size > 0
    # run with --cores 2: the report job got both cores and drew its figures in two processes
    assert "drawing 6 figures in 2 processes" in (res / "logs" / "report.log").read_text()
    runs = pd.read_csv(res / "tables" / "runs.csv")
    # A deterministic method (magnitude, magnitude_node, clustered) runs one trial, not copies.
    trials = {m: PRUNERS[m].n_trials(cfg["pruning"]["trials"]) for m in cfg["pruning"]["methods"]}
    assert trials["random"] == cfg["pruning"]["trials"] and trials["clustered"] == 1
    # greedy_node prunes fully connected nets only: no (lenet5, greedy_node) jobs.
    combos = [(a, m) for a in cfg["architectures"] for m in cfg["pruning"]["methods"]]
    combos.remove(("lenet5", "greedy_node"))
    n_expected = len(cfg["pruning"]["amounts"]) * sum(trials[m] for _, m in combos)
    assert len(runs) == n_expected
    assert runs.groupby(["arch", "method", "amount"])["trial"].nunique().to_dict() == {
        (a, m, s): trials[m] for a, m in combos for s in cfg["pruning"]["amounts"]
    }
    assert set(runs["status"]) <= {"converged", "capped", "diverged"}
    # Exact sparsity without replacement (up to rounding of s * n per tensor).
    conn = runs[runs["level"] == "connection"]
    assert (conn["sparsity"] - conn["amount"]).abs().max() < 1e-3
    # Node methods remove exactly round(s * units) units of every hidden layer.
    hidden = {
        "lenet300100": {"fc1": 300, "fc2": 100},
        "lenet5": {"conv1": 6, "conv2": 16, "fc1": 84},
    }
    node = runs[runs["level"] == "node"]
    assert set(node["method"]) == {"random_node", "magnitude_node", "clustered", "greedy_node"}
    for arch, layers in hidden.items():
        sub = node[node["arch"] == arch]
        for layer, units in layers.items():
            expected = sub["amount"].map(lambda s, n=units: round(s * n))
            assert (sub[f"units_removed[{layer}]"] == expected).all(), (arch, layer)
    assert (node["n_params_remaining"] < node["n_params"]).all()
    # Net Deviation and curvature columns are filled for every run; D peaks at 1 per sweep.
    assert runs[["ndev_lhs", "ndev_rhs", "mu1", "mu2", "lower_ep_g1"]].notna().all().all()
    summary = pd.read_csv(res / "tables" / "netdev.csv")
    assert summary.groupby(["arch", "method"])["D"].max().round(9).eq(1).all()
    # Iterations never exceed the cap; 'capped' means exactly the cap.
    capped = runs[runs["status"] == "capped"]
    assert (capped["iterations"] == capped["max_iters"]).all()
    assert (runs["iterations"] <= runs["max_iters"]).all()
    # The table's bounds are the formulas applied to the table's own measurements.
    for r in runs.itertuples():
        assert math.isclose(r.upper, bounds.upper_bound(r.d2, r.eta, r.eps), rel_tol=1e-6)
        assert math.isclose(r.lower_g1, r.g_s / r.g_init * r.t_init, rel_tol=1e-6)
    dense = pd.read_csv(res / "tables" / "dense.csv").set_index("arch")
    assert dense.loc["lenet300100", "test_acc"] > 0.9  # it really learned MNIST
    metrics = read_json(res / "metrics.json")
    assert set(metrics["retrain"]) == {f"{a}/{m}" for a, m in combos}
    assert (res / "netdev" / "lenet5" / "seed0" / "jacobians.json").is_file()


def test_rerun_with_nothing_changed_does_nothing(quick_run: Path) -> None:
    res = snakemake(quick_run, "-n", "--configfile", "config/quick.yaml")
    assert res.returncode == 0, res.stderr
    assert "Nothing to be done" in res.stdout + res.stderr


def test_changing_eps_reruns_only_retraining_of_that_architecture(quick_run: Path) -> None:
    name = write_config(
        quick_run,
        "eps.yaml",
        lambda c: c["architectures"]["lenet300100"]["retrain"].update(eps=0.02),
    )
    res = snakemake(quick_run, "-n", "--configfile", name)
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout + res.stderr)
    cfg = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    per_arch = len(cfg["pruning"]["methods"]) * len(cfg["pruning"]["amounts"])
    assert "greedy_node" in cfg["pruning"]["methods"]  # lenet300100 runs every method
    assert counts.get("retrain") == per_arch
    assert "prune" not in counts and "train_dense" not in counts and "prepare_data" not in counts
    assert "jacobians" not in counts
    assert counts.get("bounds") == 1 and counts.get("report") == 1


def test_method_options_and_trials_rerun_only_the_methods_that_read_them(quick_run: Path) -> None:
    cfg = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    per_method = len(cfg["architectures"]) * len(cfg["pruning"]["amounts"])
    # a clustered option: only clustered pruning (and its retraining) reruns
    name = write_config(
        quick_run, "keep.yaml", lambda c: c["pruning"]["clustered"].update(keep="norm")
    )
    res = snakemake(quick_run, "-n", "--configfile", name)
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout + res.stderr)
    assert counts.get("prune") == per_method and counts.get("retrain") == per_method
    assert "jacobians" not in counts and "train_dense" not in counts
    # more trials: only the stochastic methods (random, random_node) rerun
    name = write_config(quick_run, "trials.yaml", lambda c: c["pruning"].update(trials=3))
    res = snakemake(quick_run, "-n", "--configfile", name)
    assert res.returncode == 0, res.stderr
    stochastic = [m for m in cfg["pruning"]["methods"] if PRUNERS[m].stochastic]
    assert sorted(stochastic) == ["random", "random_node"]
    assert job_counts(res.stdout + res.stderr).get("prune") == per_method * len(stochastic)
    # repeating the deterministic methods' retraining: only those (and greedy_node only on
    # the fully connected architecture) rerun
    name = write_config(
        quick_run, "repeat.yaml", lambda c: c["pruning"].update(repeat_deterministic=True)
    )
    res = snakemake(quick_run, "-n", "--configfile", name)
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout + res.stderr)
    n_det = len(cfg["pruning"]["methods"]) - len(stochastic)
    expected = per_method * n_det - len(cfg["pruning"]["amounts"]) * (
        "greedy_node" in cfg["pruning"]["methods"]
    )
    assert counts.get("prune") == counts.get("retrain") == expected


def test_changing_one_amount_reruns_only_that_amount(quick_run: Path) -> None:
    cfg = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    amounts = list(cfg["pruning"]["amounts"])
    amounts[1] = 0.55
    name = write_config(quick_run, "amount.yaml", lambda c: c["pruning"].update(amounts=amounts))
    res = snakemake(quick_run, "-n", "--configfile", name)
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout + res.stderr)
    # one job per (architecture, method) pair the study runs (greedy_node skips lenet5)
    new_jobs = len(cfg["architectures"]) * len(cfg["pruning"]["methods"]) - 1
    assert counts.get("prune") == new_jobs and counts.get("retrain") == new_jobs
    assert "train_dense" not in counts and "prepare_data" not in counts


def test_invalid_config_fails_before_any_job(tmp_path: Path) -> None:
    project_copy(tmp_path)
    name = write_config(tmp_path, "bad.yaml", lambda c: c["pruning"].update(amounts=[0.3, 1.5]))
    res = snakemake(tmp_path, "--cores", "1", "--configfile", name)
    assert res.returncode != 0
    assert "pruning.amounts.1" in res.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()
