"""End to end: the quick pre-training threshold preset through Snakemake on real MNIST.

The run happens once per session in a scratch copy of the project; the caching tests only
dry-run against its finished state, and the consistency tests recompute what the jobs wrote.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from workflow_helpers import REPO, job_counts, project_copy, snakemake, variant_config

from prunetime.config import ConfigError, validate_config
from prunetime.data import load_prepared
from prunetime.greedy import TwoLayerNet, greedy_select, kappa_of, prepare_inputs
from prunetime.io import load_torch, read_json
from prunetime.plan import check_pretrain_config
from prunetime.threshold import DEFINITIONS, LAWS, threshold_step

QUICK = "config/pretrain_quick.yaml"


def quick_cfg() -> dict:
    return yaml.safe_load((REPO / QUICK).read_text())


def variant(workdir: Path, name: str, edit) -> str:
    return variant_config(workdir, QUICK, name, edit)


def results(workdir: Path) -> Path:
    return workdir / "results" / quick_cfg()["study"] / "pretrain"


def test_quick_run_writes_figures_tables_and_summary(pretrain_run: Path) -> None:
    res = results(pretrain_run)
    for name in (
        "pruned_loss_vs_pretraining",
        "accuracy_vs_pretraining",
        "threshold_vs_m",
        "normalised_threshold_vs_m",
    ):
        png = (res / "figures" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    md = (res / "summary.md").read_text()
    assert "T*(m)" in md and "figures/threshold_vs_m.png" in md
    log = (res.parent / "logs" / "pretrain" / "report.log").read_text()
    assert "drawing 4 figures in 2 processes" in log  # --cores 2: the job's two cores
    fits_md = (res / "tables" / "fits.md").read_text()
    for law in LAWS:
        assert f"| {law} " in fits_md


def test_tables_cover_every_run_checkpoint_and_definition(pretrain_run: Path) -> None:
    cfg = quick_cfg()
    p = cfg["pretrain"]
    res = results(pretrain_run)
    curves = pd.read_csv(res / "tables" / "curves.csv")
    n_ckpt = curves["step"].nunique()
    assert curves["step"].max() == p["train"]["steps"] and curves["step"].min() == 0
    per_ckpt = 1 + len(p["greedy"]["variants"]) * (2 if p["finetune"]["steps"] else 1)
    assert len(curves) == len(p["m"]) * len(cfg["seeds"]) * n_ckpt * per_ckpt
    th = pd.read_csv(res / "tables" / "thresholds.csv")
    assert len(th) == len(p["m"]) * len(cfg["seeds"]) * (per_ckpt - 1) * len(DEFINITIONS)
    assert th["t_star"].between(0, p["train"]["steps"]).all()
    assert (th["lambda0"] > 0).all() and (th["lambda0_inf"] > 0).all()
    fits = pd.read_csv(res / "tables" / "fits.csv")
    groups = fits.groupby(["variant", "stage", "definition"])
    assert groups.size().eq(len(LAWS)).all() and groups["best"].sum().eq(1).all()
    metrics = read_json(res / "metrics.json")
    assert set(metrics["t_star"]) == {str(m) for m in p["m"]}
    assert metrics["best_law"] in LAWS


def test_pretraining_learns_and_helps_the_subnetwork(pretrain_run: Path) -> None:
    curves = pd.read_csv(results(pretrain_run) / "tables" / "curves.csv")
    last, first = curves["step"].max(), 0
    dense = curves[(curves["variant"] == "dense") & (curves["step"] == last)]
    assert (dense["test_acc"] > 0.6).all()  # it really learned MNIST
    pruned = curves[curves["stage"] == "pruned"].groupby(["m", "variant", "step"])["train_loss"]
    mean = pruned.mean().unstack("step")
    assert (mean[last] < mean[first]).all()  # pre-training made the greedy subnetwork better


def test_thresholds_and_selections_recompute_from_the_saved_outputs(pretrain_run: Path) -> None:
    """T* in the table is threshold_step on the table's curve; a selection is reproducible."""
    cfg = quick_cfg()
    p = cfg["pretrain"]
    res = results(pretrain_run)
    curves = pd.read_csv(res / "tables" / "curves.csv")
    th = pd.read_csv(res / "tables" / "thresholds.csv")
    m, seed = p["m"][-1], cfg["seeds"][-1]
    for definition in DEFINITIONS:
        c = curves[
            (curves["m"] == m)
            & (curves["seed"] == seed)
            & (curves["variant"] == "with_replacement")
            & (curves["stage"] == "pruned")
        ].sort_values("step")
        row = th[
            (th["m"] == m)
            & (th["seed"] == seed)
            & (th["variant"] == "with_replacement")
            & (th["stage"] == "pruned")
            & (th["definition"] == definition)
        ]
        expected = threshold_step(
            c["step"], c["train_loss"], definition, tolerance=p["threshold"]["tolerance"]
        )
        assert row["t_star"].item() == pytest.approx(expected, rel=1e-6)

    ck = load_torch(res / "train" / f"m{m}" / f"seed{seed}" / "checkpoints.pt")
    chosen = read_json(res / "prune" / f"m{m}" / f"seed{seed}" / "prune.json")["selections"]
    prep = load_prepared(pretrain_run / "data" / "prepared" / "mnist.pt")
    x = prepare_inputs(prep.train.x[ck["subset"]])
    y = prep.train.y[ck["subset"]]
    assert torch.bincount(y).tolist() == [m // 10] * 10  # balanced
    i = len(ck["steps"]) - 1
    net = TwoLayerNet(784, p["model"]["width"], 10, float(ck["out_scale"]))
    net.load_state_dict({"w": ck["w"][i], "a": ck["a"][i]})
    step = int(ck["steps"][i])
    for variant, repl in (("with_replacement", True), ("without_replacement", False)):
        with torch.no_grad():
            sel = greedy_select(
                net.hidden(x), net.a, kappa_of(net), y, p["greedy"]["size"], replacement=repl
            )
        assert sel.indices == chosen[f"{step}/{variant}"]
        row = curves[
            (curves["m"] == m)
            & (curves["seed"] == seed)
            & (curves["step"] == step)
            & (curves["variant"] == variant)
            & (curves["stage"] == "pruned")
        ]
        assert row["train_loss"].item() == pytest.approx(sel.losses[-1], rel=1e-4)
    assert len(set(chosen[f"{step}/without_replacement"])) == p["greedy"]["size"]


def test_rerun_with_nothing_changed_does_nothing(pretrain_run: Path) -> None:
    res = snakemake(pretrain_run, "-n", "--configfile", QUICK)
    assert res.returncode == 0, res.stderr
    assert "Nothing to be done" in res.stdout + res.stderr


def test_changing_greedy_size_reruns_selection_but_not_training(pretrain_run: Path) -> None:
    name = variant(pretrain_run, "greedy.yaml", lambda c: c["pretrain"]["greedy"].update(size=8))
    res = snakemake(pretrain_run, "-n", "--configfile", name)
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout + res.stderr)
    cfg = quick_cfg()
    assert counts.get("pretrain_prune") == len(cfg["pretrain"]["m"]) * len(cfg["seeds"])
    assert counts.get("pretrain_threshold") == 1 and counts.get("pretrain_report") == 1
    assert "pretrain_train" not in counts and "prepare_data" not in counts


def test_adding_an_m_adds_only_its_jobs_and_a_threshold_change_only_the_tables(
    pretrain_run: Path,
) -> None:
    cfg = quick_cfg()
    name = variant(pretrain_run, "m.yaml", lambda c: c["pretrain"]["m"].append(1500))
    counts = job_counts(snakemake(pretrain_run, "-n", "--configfile", name).stdout)
    assert counts.get("pretrain_train") == len(cfg["seeds"])
    assert counts.get("pretrain_prune") == len(cfg["seeds"])
    name = variant(
        pretrain_run, "tol.yaml", lambda c: c["pretrain"]["threshold"].update(tolerance=0.1)
    )
    counts = job_counts(snakemake(pretrain_run, "-n", "--configfile", name).stdout)
    assert counts == {"pretrain_threshold": 1, "pretrain_report": 1, "summary": 1, "all": 1}


def test_lint_and_the_retraining_preset_are_unaffected(pretrain_run: Path) -> None:
    lint = snakemake(pretrain_run, "--lint", "--configfile", QUICK)
    assert "pretrain.smk" not in lint.stdout + lint.stderr
    res = snakemake(pretrain_run, "-n", "--configfile", "config/quick.yaml")
    assert res.returncode == 0, res.stderr
    assert not any(r.startswith("pretrain") for r in job_counts(res.stdout + res.stderr))


def test_invalid_pretrain_config_fails_before_any_job(tmp_path: Path) -> None:
    project_copy(tmp_path)

    def edit(c: dict) -> None:
        c["pretrain"]["greedy"]["variants"] = ["with_replacement"]
        c["pretrain"]["threshold"]["variant"] = "without_replacement"

    name = variant(tmp_path, "bad.yaml", edit)
    res = snakemake(tmp_path, "--cores", "1", "--configfile", name)
    assert res.returncode != 0
    assert "pretrain.threshold.variant" in res.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_schema_pretrain_section() -> None:
    cfg = validate_config({"pretrain": {"m": [1000]}})
    assert cfg["architectures"] == {}  # a pretrain-only config needs no architecture
    assert cfg["pretrain"]["threshold"]["primary"] == "within"
    assert cfg["pretrain"]["model"]["scaling"] == "mean_field"
    check_pretrain_config(cfg)
    with pytest.raises(ConfigError, match="architectures"):
        validate_config({})
    for bad, key in (
        ({"pretrain": {"model": {"scaling": "sqrt"}}}, "pretrain.model.scaling"),
        ({"pretrain": {"m": [5]}}, "pretrain.m.0"),
        ({"pretrain": {"knobs": 1}}, "knobs"),
    ):
        with pytest.raises(ConfigError, match=re.escape(key)):
            validate_config(json.loads(json.dumps(bad)))
    small = validate_config({"pretrain": {"m": [100], "train": {"batch_size": 128}}})
    with pytest.raises(ConfigError, match="pretrain.train.batch_size"):
        check_pretrain_config(small)
