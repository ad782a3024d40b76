"""The quick preset through the Slurm profile on a real single-node Slurm, against a local run.

cluster/slurm/local_slurm.sh installs (apt) and starts munged, MariaDB, slurmdbd, slurmctld
and slurmd on this machine; Snakemake then submits every job with sbatch through
snakemake-executor-plugin-slurm and follows it with sacct. The test checks with sacct that
each Snakemake job ran as its own completed Slurm job, in the partition and account taken
from the environment, and that the results equal those of the local run of the same preset
(fixture `quick_run`). The daemons are stopped at the end unless they were running before.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from workflow_helpers import QUICK, REPO, job_counts, project_copy, snakemake

from prunetime.io import read_json

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SCRIPT = REPO / "cluster" / "slurm" / "local_slurm.sh"
PARTITION = "local"  # the script's partition and account (its defaults)
ACCOUNT = "prunetime"
STUDY = "quick"
# Columns holding wall-clock times: the only ones allowed to differ between the two runs.
TIMING = {"runs.csv": ["wall_s"], "dense.csv": ["train_wall_s"]}


@pytest.fixture(scope="module")
def local_slurm() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "the Slurm test starts a single-node Slurm and must run as root; as root it "
            "installs the Debian packages slurm-wlm slurmdbd munge mariadb-server itself "
            f"(or run `sudo {SCRIPT.relative_to(REPO)} start` once, then the tests as root)",
            pytrace=False,
        )
    was_up = subprocess.run([SCRIPT, "status"], capture_output=True).returncode == 0
    t0 = time.monotonic()
    res = subprocess.run([SCRIPT, "start"], capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, f"{SCRIPT.name} start failed:\n{res.stdout}\n{res.stderr}"
    print(f"local Slurm up in {time.monotonic() - t0:.0f} s")
    yield
    if not was_up:
        res = subprocess.run([SCRIPT, "stop"], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def slurm_run(
    local_slurm: None, tmp_path_factory: pytest.TempPathFactory, mnist_mirror: Path
) -> tuple[Path, str]:
    workdir = project_copy(tmp_path_factory.mktemp("slurm"))
    env = {
        **os.environ,
        "PRUNETIME_DATA_MIRROR": str(mnist_mirror),
        "SBATCH_PARTITION": PARTITION,
        "SBATCH_ACCOUNT": ACCOUNT,
    }
    t0 = time.monotonic()
    res = snakemake(
        workdir,
        "--workflow-profile",
        "workflow/profiles/slurm",
        "--configfile",
        QUICK,
        # the profile waits 20 s before its first sacct query (kind to a real cluster's
        # slurmdbd); on a private one-node Slurm 2 s keeps the run short
        "--slurm-init-seconds-before-status-checks",
        "2",
        env=env,
        timeout=2400,
    )
    assert res.returncode == 0, res.stderr[-6000:]
    print(f"quick preset through Slurm in {time.monotonic() - t0:.0f} s")
    return workdir, res.stderr


def sacct(job_ids: list[str]) -> pd.DataFrame:
    fields = ["JobIDRaw", "JobName", "State", "Comment", "Account", "Partition", "ExitCode"]
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "--clusters", "all", f"--format={','.join(fields)}"]
        + ["-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=fields).set_index("JobIDRaw")


def test_every_job_ran_as_a_completed_slurm_job(slurm_run: tuple[Path, str]) -> None:
    _, log = slurm_run
    # the plan: Snakemake's job table before it started (rule `all` only collects outputs
    # and runs in Snakemake itself)
    table = log.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    planned = {r: n for r, n in job_counts("Job stats:" + table).items() if r != "all"}
    assert set(planned) == {
        "prepare_data", "train_dense", "jacobians", "prune", "retrain", "bounds", "report",
        "summary",
    }  # fmt: skip
    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log))
    assert len(submitted) == sum(planned.values())  # one sbatch per job, no retries
    jobs = sacct(list(submitted.values()))
    assert sorted(jobs.index) == sorted(submitted.values())
    assert (jobs["State"] == "COMPLETED").all(), jobs[jobs["State"] != "COMPLETED"]
    assert (jobs["ExitCode"] == "0:0").all()
    assert jobs["JobName"].nunique() == 1  # the run's id: how the plugin finds its jobs
    assert set(jobs["Partition"]) == {PARTITION} and set(jobs["Account"]) == {ACCOUNT}
    # The plugin records rule and wildcards in the job comment: one job per Snakemake job.
    rules = jobs["Comment"].str.extract(r"^rule_([a-z_]+?)(?:_wildcards_.*)?$")[0]
    assert rules.notna().all(), jobs["Comment"]
    assert rules.value_counts().to_dict() == planned
    assert jobs["Comment"].is_unique


def read_table(res: Path, name: str) -> pd.DataFrame:
    table = pd.read_csv(res / "tables" / name).drop(columns=TIMING.get(name, []))
    keys = [c for c in ("arch", "seed", "method", "amount", "trial") if c in table]
    return table.sort_values(keys).reset_index(drop=True)


def close(a: object, b: object, path: str = "") -> None:
    """Nested JSON values equal: strings and integers exactly, floats to 1e-9 relative."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{path}/{i}")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_slurm_results_equal_the_local_run(slurm_run: tuple[Path, str], quick_run: Path) -> None:
    slurm = slurm_run[0] / "results" / STUDY
    local = quick_run / "results" / STUDY
    names = sorted(p.name for p in (local / "tables").glob("*.csv"))
    assert {"runs.csv", "dense.csv", "summary.csv", "netdev.csv"} <= set(names)
    assert names == sorted(p.name for p in (slurm / "tables").glob("*.csv"))
    for name in names:
        a, b = read_table(local, name), read_table(slurm, name)
        if name == "runs.csv":  # retraining iterations and outcomes exactly
            assert a["iterations"].tolist() == b["iterations"].tolist()
            assert a["status"].tolist() == b["status"].tolist()
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, atol=1e-12)
    close(read_json(local / "metrics.json"), read_json(slurm / "metrics.json"))
    for fig in ("iterations_vs_sparsity", "accuracy_vs_sparsity", "netdev_vs_amount"):
        assert (slurm / "figures" / f"{fig}.png").stat().st_size > 10_000
