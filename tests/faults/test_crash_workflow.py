"""Crashes, divergence and determinism in real workflow runs of a tiny study.

Run A goes through uninterrupted with --cores 1. Run B uses --cores 2; its dense-training
job and then a retraining job are killed with SIGKILL mid-way, and the workflow is rerun
until complete. Both must give byte-identical metrics and the same per-run results, and
the diverging architecture must be recorded as diverged while the rest goes on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from workflow_helpers import project_copy  # noqa: E402

STUDY = "faults"
CONFIG = {
    "study": STUDY,
    "eval": {"size": 200, "seed": 0},
    "architectures": {
        "slow": {
            "model": "lenet300100",
            "train": {"steps": 1500, "log_every": 100, "checkpoint_every": 100},
            "retrain": {"eps": 0.005, "max_iters": 200},
        },
        "blowup": {
            "model": "lenet300100_relu",
            "init": {"scheme": "default"},
            "train": {"steps": 60, "log_every": 20},
            "retrain": {"optimizer": "sgd", "lr": 1000.0, "eps": 0.001, "max_iters": 50},
        },
    },
    "pruning": {"methods": ["random"], "amounts": [0.5], "trials": 8},
    "report": {"dpi": 150},
}


def env_for(mirror: Path) -> dict[str, str]:
    env = {**os.environ, "PRUNETIME_DATA_MIRROR": str(mirror)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def start(workdir: Path, cores: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            str(cores),
            "--configfile",
            "faults.yaml",
            "--rerun-incomplete",
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kill_job_when(path: Path, pattern: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Wait until ``path`` exists, then SIGKILL the job process whose command matches."""
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"workflow ended before {path} appeared:\n{proc.stdout.read()}"
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)
    pids = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    assert pids, f"no process matches {pattern!r}"
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=1200)
    return proc.returncode, out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, mnist_mirror: Path) -> dict[str, Path]:
    env = env_for(mnist_mirror)
    out = {}
    for name in ("a", "b"):
        wd = project_copy(tmp_path_factory.mktemp(f"faults_{name}"))
        (wd / "faults.yaml").write_text(yaml.safe_dump(CONFIG))
        out[name] = wd

    rc, log = finish(start(out["a"], 1, env))
    assert rc == 0, log[-4000:]

    res_b = out["b"] / "results" / STUDY
    proc = start(out["b"], 2, env)
    kill_job_when(
        res_b / "dense" / "slow" / "seed0" / "dense.resume.pt", "train_dense.py.*--arch slow", proc
    )
    rc, log = finish(proc)
    assert rc != 0, "the killed job should have failed the first attempt"

    proc = start(out["b"], 2, env)
    journal = res_b / "retrain" / "slow" / "seed0" / "random" / "s0.5.journal.pt"
    kill_job_when(journal, "retrain.py.*--arch slow", proc)
    rc, log = finish(proc)
    assert rc != 0

    rc, log = finish(start(out["b"], 2, env))
    assert rc == 0, log[-4000:]
    return out


def test_killed_jobs_resumed(runs: dict[str, Path]) -> None:
    logs = runs["b"] / "results" / STUDY / "logs"
    assert "resumed dense training at step" in (logs / "train_dense" / "slow_seed0.log").read_text()
    assert "resumed" in (logs / "retrain" / "slow_seed0_random_s0.5.log").read_text()
    # no resume state is left behind once the real outputs exist
    assert not list((runs["b"] / "results").rglob("*.resume.pt"))
    assert not list((runs["b"] / "results").rglob("*.journal.pt"))


def test_interrupted_run_equals_uninterrupted_across_core_counts(runs: dict[str, Path]) -> None:
    a = runs["a"] / "results" / STUDY
    b = runs["b"] / "results" / STUDY
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    ra = pd.read_csv(a / "tables" / "runs.csv").drop(columns=["wall_s"])
    rb = pd.read_csv(b / "tables" / "runs.csv").drop(columns=["wall_s"])
    pd.testing.assert_frame_equal(ra, rb)
    da = pd.read_csv(a / "tables" / "dense.csv").drop(columns=["train_wall_s"])
    db = pd.read_csv(b / "tables" / "dense.csv").drop(columns=["train_wall_s"])
    pd.testing.assert_frame_equal(da, db)


def test_divergence_is_recorded_and_counted_not_averaged(runs: dict[str, Path]) -> None:
    res = runs["a"] / "results" / STUDY
    df = pd.read_csv(res / "tables" / "runs.csv")
    blow = df[df["arch"] == "blowup"]
    assert (blow["status"] == "diverged").all()
    assert (blow["iterations"] >= 1).all() and (blow["iterations"] < 50).all()
    assert (df.loc[df["arch"] == "slow", "status"] != "diverged").all()
    summary = pd.read_csv(res / "tables" / "summary.csv").set_index("arch")
    assert summary.loc["blowup", "n_diverged"] == len(blow)
    assert pd.isna(summary.loc["blowup", "iterations_mean"])  # nothing averaged in
    html = (res / "summary.html").read_text()
    assert f"{len(blow)} diverged run(s)" in html
    assert (res / "figures" / "iterations_vs_sparsity.png").stat().st_size > 10_000
