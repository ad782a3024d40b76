"""Helpers for tests that run the real workflow: a project copy, Snakemake, its job stats."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
QUICK = "config/quick.yaml"
PROJECT_PARTS = ("Snakefile", "src", "scripts", "workflow", "config", "pyproject.toml")


def project_copy(dest: Path) -> Path:
    """A checkout-like copy of the project (code and config, no data or results)."""
    for part in PROJECT_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / part)
    return dest


def snakemake(
    workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 1800
) -> subprocess.CompletedProcess:
    """Run Snakemake in ``workdir`` with this interpreter's environment first on PATH."""
    env = dict(env or os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def job_counts(output: str) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table of a dry run into {rule: count}."""
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    return {
        m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M) if m[1] != "total"
    }


def variant_config(workdir: Path, base: str, name: str, edit: Callable[[dict], None]) -> str:
    """Write ``base`` (a config path relative to the repo) edited by ``edit`` as ``name``."""
    cfg = yaml.safe_load((REPO / base).read_text())
    edit(cfg)
    (workdir / name).write_text(yaml.safe_dump(cfg))
    return name


def run_preset(workdir: Path, configfile: str, mirror: Path) -> Path:
    """Run a preset to completion in ``workdir`` with the offline mirror; fail with its log."""
    env = {**os.environ, "PRUNETIME_DATA_MIRROR": str(mirror)}
    res = snakemake(workdir, "--cores", "2", "--configfile", configfile, env=env)
    assert res.returncode == 0, res.stderr[-5000:]
    return workdir
