"""The torch-free catalog agrees with the registries, and parsing the workflow skips torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_helpers import project_copy

from prunetime import catalog, plan
from prunetime.config import ConfigError, load_config, validate_config
from prunetime.models import MODELS, build_model, weight_names
from prunetime.pruning import PRUNERS

REPO = Path(__file__).resolve().parents[1]


def test_catalog_matches_the_registered_models_and_methods() -> None:
    """Every registered model's weight names and every method's flags, as the classes say."""
    cat = catalog.compute()
    assert sorted(cat["models"]) == sorted(MODELS)
    assert sorted(cat["methods"]) == sorted(PRUNERS)
    for name in MODELS:
        model = build_model(name)
        assert cat["models"][name]["weights"] == weight_names(model)
        for method, cls in PRUNERS.items():
            assert (name in cat["methods"][method]["applies_to"]) == cls.applies_to(model)
    for method, cls in PRUNERS.items():
        assert cat["methods"][method]["stochastic"] is bool(cls.stochastic)
    assert "lenet5" not in cat["methods"]["greedy_node"]["applies_to"]
    assert "lenet300100" in cat["methods"]["greedy_node"]["applies_to"]


PLAN = r"""
import json, sys
from pathlib import Path
from prunetime import catalog, plan
from prunetime.config import load_config
catalog.cache_dir = Path(sys.argv[1])
cfg = load_config("config/config.yaml")
combos = plan.job_combos(cfg)
slices = {m: plan.job_config(cfg, "lenet5", "prune", m)["pruning"].get("trials")
          for _, m in combos}
print(json.dumps({"torch": "torch" in sys.modules, "combos": combos, "trials": slices}))
"""


def _plan_in_fresh_process(cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    out = subprocess.run(
        [sys.executable, "-c", PLAN, str(cache)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout)


def test_cached_catalog_plans_the_jobs_without_importing_torch(tmp_path: Path) -> None:
    """The first planning builds the catalog file; the next one, a new process, needs no torch
    and plans the same jobs (the same (arch, method) pairs and per-method trial slices)."""
    first = _plan_in_fresh_process(tmp_path)
    (cached,) = tmp_path.glob("catalog-*.json")
    assert json.loads(cached.read_text())["digest"] == catalog.source_digest()
    second = _plan_in_fresh_process(tmp_path)
    assert first["torch"] is True and second["torch"] is False
    assert second["combos"] == first["combos"]
    assert ["lenet5", "greedy_node"] not in second["combos"]
    assert ["lenet300100", "greedy_node"] in second["combos"]
    assert second["trials"]["random"] == 50 and second["trials"]["magnitude"] is None
    # The same plan as the job modules compute in this process (torch imported).
    cfg = load_config(REPO / "config" / "config.yaml")
    assert [list(c) for c in plan.job_combos(cfg)] == second["combos"]


def test_broken_or_foreign_cache_file_is_rebuilt(tmp_path: Path, monkeypatch) -> None:
    """A half-written cache file, or one of other source, is never taken for the catalog."""
    digest = catalog.source_digest()
    path = tmp_path / f"catalog-{digest[:16]}.json"
    path.write_text('{"digest": "')  # a writer that died mid-file
    monkeypatch.setattr(catalog, "cache_dir", tmp_path)
    catalog._load.cache_clear()
    assert catalog.load() == catalog.compute()
    assert json.loads(path.read_text())["digest"] == digest
    path.write_text(json.dumps({"digest": "0" * 64, "catalog": {"models": {}, "methods": {}}}))
    catalog._load.cache_clear()
    assert catalog.weight_names("lenet5") == weight_names(build_model("lenet5"))
    assert not list(tmp_path.glob(".catalog-*"))  # no temporary file left behind
    # A cache folder that cannot be created (here: a file is in the way) costs only the cache.
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setattr(catalog, "cache_dir", blocker / "prunetime")
    catalog._load.cache_clear()
    assert catalog.stochastic("random") is True and catalog.stochastic("magnitude") is False
    catalog._load.cache_clear()


def test_config_checks_read_the_catalog() -> None:
    """The consistency checks that need model facts still name the key and what is allowed."""
    cfg = load_config(REPO / "config" / "config.yaml")
    cfg["pruning"]["layers"] = ["fc1", "conv9"]
    with pytest.raises(ConfigError, match=r"pruning.layers.*conv9.*lenet"):
        validate_config(cfg)
    cfg = load_config(REPO / "config" / "config.yaml")
    del cfg["architectures"]["lenet300100"]
    cfg["pruning"]["methods"] = ["greedy_node"]
    with pytest.raises(ConfigError, match="greedy_node.*fully connected"):
        validate_config(cfg)


def test_workflow_parse_imports_no_torch(tmp_path: Path) -> None:
    """`snakemake -n` on the paper preset: after the first call (which caches the catalog),
    parsing the workflow imports no torch (seconds of every call, dry runs included)."""
    work = project_copy(tmp_path)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [sys.executable, "-X", "importtime", "-m", "snakemake", "-n"]
    imported, out = [], None
    for _ in range(2):
        out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        imported.append(
            {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
        )
    assert "torch" in imported[0]  # the catalog is built once
    assert "torch" not in imported[1]
    assert "prunetime.plan" in imported[1]
    assert list((work / ".snakemake" / "prunetime").glob("catalog-*.json"))
    # The retrain jobs carry plan.job_priority: the costliest (LeNet-300-100, random, s = 0.9,
    # 50 trials up to 1000 iterations) first.
    jobs = re.findall(
        r"rule retrain:.*?wildcards: (arch=\S+, seed=\d+, method=\w+, amount=[\d.]+).*?"
        r"priority: (\d+)",
        out.stdout + out.stderr,
        flags=re.S,
    )
    assert len(jobs) > 50
    prio = {job: int(value) for job, value in jobs}
    assert prio["arch=lenet300100, seed=0, method=random, amount=0.9"] == max(prio.values())
    # lowest: a deterministic LeNet-5 job at s = 0.1 (one run, cap 150)
    assert max(prio.values()) == 45000 and min(prio.values()) == 15
    # The jobs every prune job of an architecture waits for go before all of them.
    gates = re.findall(
        r"rule (train_dense|jacobians):.*?wildcards: arch=(\w+).*?priority: (\d+)",
        out.stdout + out.stderr,
        flags=re.S,
    )
    assert sorted((rule, arch) for rule, arch, _ in gates) == [
        ("jacobians", "lenet300100"),
        ("jacobians", "lenet5"),
        ("train_dense", "lenet300100"),
        ("train_dense", "lenet5"),
    ]
    assert {int(p) for *_, p in gates} == {45001}


def test_job_priority_puts_the_costliest_retraining_first() -> None:
    """Runs x iteration cap x amount: stochastic before deterministic (unless repeated),
    large amounts before small, the 1000-iteration LeNet-300-100 before the capped LeNet-5."""
    cfg = load_config(REPO / "config" / "config.yaml")
    prio = plan.job_priority
    assert prio(cfg, "lenet300100", "random", 0.9) == 50 * 1000 * 0.9
    assert prio(cfg, "lenet300100", "random", 0.9) > prio(cfg, "lenet300100", "random", 0.5)
    assert prio(cfg, "lenet300100", "random", 0.5) > prio(cfg, "lenet5", "random", 0.9)
    assert prio(cfg, "lenet5", "random", 0.1) > prio(cfg, "lenet5", "magnitude", 0.9)
    cfg["pruning"]["repeat_deterministic"] = True
    assert prio(cfg, "lenet5", "magnitude", 0.9) == prio(cfg, "lenet5", "random", 0.9)
    # The gating jobs (dense training, Jacobians) outrank every prune and retrain job.
    assert plan.gate_priority(cfg) == prio(cfg, "lenet300100", "random", 0.9) + 1
    cfg["architectures"]["lenet300100"]["retrain"]["max_iters"] = 10
    assert plan.gate_priority(cfg) == prio(cfg, "lenet5", "random", 0.9) + 1
