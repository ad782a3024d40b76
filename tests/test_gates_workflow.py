"""End to end: the quick structure-discovery preset through Snakemake on real MNIST.

The run happens once per session in a scratch copy of the project; the other tests read its
outputs, recompute what they can from the saved models, or dry-run against its state.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from workflow_helpers import REPO, job_counts, project_copy, run_preset, snakemake, variant_config

from prunetime.gates import count_flops, count_params
from prunetime.gates_study import load_data, load_model
from prunetime.io import read_json
from prunetime.training import evaluate

QUICK = "config/gates_quick.yaml"


def quick_cfg() -> dict:
    return yaml.safe_load((REPO / QUICK).read_text())


@pytest.fixture(scope="session")
def gates_run(tmp_path_factory: pytest.TempPathFactory, mnist_mirror: Path) -> Path:
    return run_preset(project_copy(tmp_path_factory.mktemp("gates_quick")), QUICK, mnist_mirror)


def results(workdir: Path) -> Path:
    return workdir / "results" / quick_cfg()["study"] / "gates"


def test_quick_run_writes_tables_figures_and_headline_metrics(gates_run: Path) -> None:
    cfg = quick_cfg()
    g = cfg["gates"]
    res = results(gates_run)
    for name in ("accuracy_vs_flops", "accuracy_vs_params", "theta_trajectories", "epoch_time"):
        png = (res / "figures" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    log = (res.parent / "logs" / "gates" / "report.log").read_text()
    assert "drawing 4 figures in 2 processes" in log  # --cores 2: the job's two cores
    runs = pd.read_csv(res / "tables" / "runs.csv")
    n_nets, n_seeds, n_lams = len(g["networks"]), len(cfg["seeds"]), len(g["lambdas"])
    expected = n_nets * n_seeds * (len(g["variants"]) * n_lams + 1 + n_lams)
    assert len(runs) == expected
    assert set(runs["variant"]) == {*g["variants"], "dense", "magnitude"}
    assert runs["test_acc"].between(0.5, 1.0).all()  # every network really learned MNIST
    head = read_json(res / "metrics.json")
    net = next(iter(g["networks"]))
    for variant in (*g["variants"], "magnitude"):
        assert set(head["nets"][net][variant]) == {f"{x:g}" for x in g["lambdas"]}
    assert head["runs"] == expected
    md = (res / "summary.md").read_text()
    assert "| resmlp | combined" in md and "figures/accuracy_vs_flops.png" in md
    # the study summary page opens with this study's section and embeds its figures
    page = (res.parent / "index.html").read_text()
    assert 'id="gates"' in page and "Structure discovery during training" in page
    assert page.count("data:image/png;base64,") >= 4
    headline = read_json(res.parent / "headline.json")
    assert "best pruned network" in headline["gates"]["numbers"]


def test_lambda_zero_keeps_everything_and_the_largest_lambda_prunes(gates_run: Path) -> None:
    runs = pd.read_csv(results(gates_run) / "tables" / "runs.csv")
    gated = runs[runs["variant"].isin(["combined", "unit", "layer"])]
    zero = gated[gated["lambda"] == 0]
    assert (zero["params_frac"] == 1.0).all() and (zero["flops_frac"] == 1.0).all()
    top = gated[gated["lambda"] == gated["lambda"].max()]
    assert (top["params_frac"] < 1.0).all() and (top["flops_frac"] < 1.0).all()
    # the magnitude baseline sits at the combined variant's parameter count
    comb = runs[runs["variant"] == "combined"].set_index(["lambda", "seed"])["params"]
    mag = runs[runs["variant"] == "magnitude"].set_index(["lambda", "seed"])["params"]
    assert ((mag - comb).abs() <= 8).all()


def test_saved_models_reproduce_reported_accuracy_flops_and_params(gates_run: Path) -> None:
    cfg = quick_cfg()
    lam = f"{max(cfg['gates']['lambdas']):g}"
    run = results(gates_run) / "train" / "resmlp" / "combined" / f"lam{lam}" / "seed0"
    metrics = read_json(run / "metrics.json")
    model = load_model(run / "model.pt")
    assert count_params(model) == metrics["params"]
    assert count_flops(model, model.input_shape) == metrics["flops"]
    _, _, test = load_data(cfg, gates_run / "data" / "prepared" / "mnist.pt", "cpu")
    assert evaluate(model, test)[1] == pytest.approx(metrics["test_acc"], abs=1e-9)
    epochs = pd.read_csv(run / "epochs.csv")
    assert len(epochs) == cfg["gates"]["train"]["epochs"] and (epochs["wall_s"] > 0).all()
    assert epochs["flops"].is_monotonic_decreasing
    x = torch.zeros(2, *model.input_shape)
    model.eval()
    assert model(x).shape == (2, 10)


def test_rerun_does_nothing_and_a_lambda_adds_only_its_jobs(gates_run: Path) -> None:
    res = snakemake(gates_run, "-n", "--configfile", QUICK)
    assert res.returncode == 0, res.stderr
    assert "Nothing to be done" in res.stdout + res.stderr
    cfg = quick_cfg()
    name = variant_config(gates_run, QUICK, "lam.yaml", lambda c: c["gates"]["lambdas"].append(1))
    counts = job_counts(snakemake(gates_run, "-n", "--configfile", name).stdout)
    assert counts.get("gates_train") == len(cfg["gates"]["variants"]) * len(cfg["seeds"])
    assert counts.get("gates_magnitude") == len(cfg["seeds"])
    assert "gates_dense" not in counts and "prepare_data" not in counts


def test_the_retraining_preset_is_unaffected(gates_run: Path) -> None:
    res = snakemake(gates_run, "-n", "--configfile", "config/quick.yaml")
    assert res.returncode == 0, res.stderr
    assert not any(r.startswith("gates") for r in job_counts(res.stdout + res.stderr))


def test_invalid_gates_config_fails_before_any_job(tmp_path: Path) -> None:
    project_copy(tmp_path)
    name = variant_config(tmp_path, QUICK, "bad.yaml", lambda c: c["gates"].update(dense=False))
    res = snakemake(tmp_path, "--cores", "1", "--configfile", name)
    assert res.returncode != 0
    assert "gates.magnitude.enabled" in res.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()
