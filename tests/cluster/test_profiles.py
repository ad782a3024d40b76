"""The workflow profiles as Snakemake reads them (dry runs, no scheduler needed): per-rule
resources, GPU requests that follow the config key `device`, partition and account from the
environment, and the local profile applying only when named."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from workflow_helpers import QUICK, project_copy, snakemake, variant_config

TORCH_RULES = {"train_dense", "jacobians", "prune", "retrain"}
SLURM = ("--workflow-profile", "workflow/profiles/slurm")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return project_copy(tmp_path_factory.mktemp("profiles"))


def planned_resources(output: str) -> dict[str, list[dict[str, str]]]:
    """{rule: [resources of each planned job]} from a dry run's job listing."""
    jobs: dict[str, list[dict[str, str]]] = {}
    for block in re.split(r"\n(?=\[.*\]\n(?:local)?rule )", output):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and res:
            pairs = dict(kv.split("=", 1) for kv in res[1].split(", "))
            jobs.setdefault(rule[1], []).append(pairs)
    return jobs


def dry_run(workdir: Path, *args: str, **env: str) -> dict[str, list[dict[str, str]]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SBATCH_")}
    res = snakemake(workdir, "-n", *args, env={**clean, **env})
    assert res.returncode == 0, res.stderr[-4000:]
    return planned_resources(res.stdout + res.stderr)


def test_slurm_profile_resources_partition_account_and_gpus(workdir: Path) -> None:
    jobs = dry_run(
        workdir, *SLURM, "--configfile", QUICK, SBATCH_PARTITION="max", SBATCH_ACCOUNT="lab1"
    )
    assert {"prepare_data", "bounds", "report"} | TORCH_RULES <= set(jobs)
    for rule, planned in jobs.items():
        if rule == "all":
            continue
        for r in planned:
            assert r["slurm_partition"] == "max" and r["slurm_account"] == "lab1", rule
            assert int(r["runtime"]) > 0 and int(r["mem_mb"]) >= 1500, rule
            assert r["cpus_per_task"] == "1", rule  # config threads: 1
            # device: auto asks for no GPU (a job uses one only where it gets one)
            assert r.get("gpu", "0") == "0", rule
    assert jobs["retrain"][0]["mem_mb"] == "3000" and jobs["retrain"][0]["runtime"] == "120"
    # without the variables the keys are absent: the plugin uses the cluster's defaults
    jobs = dry_run(workdir, *SLURM, "--configfile", QUICK)
    assert not any("slurm_partition" in r or "slurm_account" in r for r in jobs["retrain"])


def test_device_cuda_requests_one_gpu_for_the_torch_jobs_only(workdir: Path) -> None:
    def cuda(cfg: dict) -> None:
        cfg.update(device="cuda", threads=2)

    name = variant_config(workdir, QUICK, "cuda.yaml", cuda)
    # a dry run caps threads at its --cores (a Slurm run does not)
    jobs = dry_run(workdir, *SLURM, "--configfile", name, "--cores", "4")
    for rule, planned in jobs.items():
        for r in planned:
            assert r.get("gpu", "0") == ("1" if rule in TORCH_RULES else "0"), rule
            if rule in TORCH_RULES:
                assert r["cpus_per_task"] == "2"


def test_local_profile_applies_only_when_named(workdir: Path) -> None:
    res = snakemake(workdir, "-n", "--configfile", QUICK)
    assert res.returncode == 0 and "workflow specific profile" not in res.stderr
    res = snakemake(
        workdir, "-n", "--workflow-profile", "workflow/profiles/default", "--configfile", QUICK
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert "workflow specific profile workflow/profiles/default" in res.stderr
    jobs = planned_resources(res.stdout + res.stderr)
    assert jobs["retrain"][0]["mem_mb"] == "3000" and jobs["train_dense"][0]["mem_mb"] == "2000"
