"""DVC over the Snakemake workflow, for real: repro, experiments, metrics, remote, plots.

Every command runs in a scratch git + DVC repository holding a checkout-like copy of the
project (code, config, dvc.yaml and .dvc/ as a `git clone` has them) whose
config/config.yaml is a tiny study (one architecture, random pruning, two amounts, two
trials, a few dozen steps): every phase of the workflow runs, on real MNIST from the
offline mirror, in about a minute.

`dvc repro` runs once per module (`base`); a test that changes the repository works on a
`cp -a` copy of it (DVC cache, git history and Snakemake records included), so each
behaviour is checked against the same first run instead of a new one. Only the
determinism check computes the study a second time, from a fresh copy.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from workflow_helpers import REPO, project_copy, run_preset

# What a clone has beyond the files the Snakemake tests copy.
DVC_PARTS = ("dvc.yaml", ".dvc", ".dvcignore", ".gitignore")
CONFIG = "config/config.yaml"
STUDY = "tiny"
STAGES = ["data", "dense", "retrain", "bounds", "report"]
# The experiment: a parameter only bounds and report depend on, with an effect on the
# headline metrics (the fitted gamma, hence the coverage of the fitted lower bound).
EXPERIMENT = "bounds.gamma_quantile=0.5"
# Rules of the pre-training threshold study (workflow/rules/pretrain.smk). It runs from its
# own config file (config/pretrain*.yaml) and is not under DVC: dvc.yaml reads one config
# file. Any other rule must belong to a stage.
NOT_UNDER_DVC = {
    "pretrain_train", "pretrain_prune", "pretrain_threshold", "pretrain_report",
    "gates_dense", "gates_train", "gates_magnitude", "gates_summary", "gates_report",
}  # fmt: skip


# --------------------------------------------------------------------------- helpers


def tiny_config() -> dict[str, Any]:
    """The quick preset shrunk to seconds per job; every phase and table still filled."""
    cfg = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    cfg["study"] = STUDY
    cfg["eval"]["size"] = 200
    arch = cfg["architectures"]["lenet300100"]
    arch["train"].update(steps=40, log_every=10)
    arch["retrain"]["max_iters"] = 40
    cfg["architectures"] = {"lenet300100": arch}
    cfg["pruning"].update(methods=["random"], amounts=[0.5, 0.9], trials=2)
    cfg["pruning"]["data"]["size"] = 50
    cfg["report"]["dpi"] = 150
    return cfg


def tool_env(mirror: Path, scratch: Path) -> dict[str, str]:
    """This interpreter's tools first on PATH (stage commands run `snakemake`, rules
    `python`); DVC's user-wide config and site cache kept out of the tests."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PRUNETIME_DATA_MIRROR"] = str(mirror)
    env["DVC_NO_ANALYTICS"] = "1"
    for var in ("DVC_GLOBAL_CONFIG_DIR", "DVC_SYSTEM_CONFIG_DIR", "DVC_SITE_CACHE_DIR"):
        env[var] = str(scratch / var.lower())
    for who in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{who}_NAME"] = "prunetime tests"
        env[f"GIT_{who}_EMAIL"] = "tests@prunetime.invalid"
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 1800) -> str:
    """Run a command, fail the test with its output if it fails, return stdout + stderr."""
    res = subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert res.returncode == 0, f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-6000:]}"
    return res.stdout


def dvc(cwd: Path, env: dict[str, str], *args: str) -> str:
    """DVC of this interpreter (CI has only the venv's bin/ on PATH)."""
    return run([sys.executable, "-m", "dvc", *args], cwd, env)


def git(cwd: Path, env: dict[str, str], *args: str) -> str:
    return run(["git", *args], cwd, env, timeout=120)


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w@.-]+)'", output)


def stages_restored(output: str) -> list[str]:
    """Stages DVC took from its run cache instead of running them."""
    return re.findall(r"Stage '([\w@.-]+)' is cached - skipping run", output)


def rules_run(output: str) -> Counter[str]:
    """Snakemake jobs started in a DVC output (aggregate target rules left out).

    The touch step of a stage runs with `--quiet rules`, so only real jobs are listed.
    """
    jobs = re.findall(r"^(?:local)?rule (\w+):\s*$", output, re.M)
    return Counter(j for j in jobs if not j.startswith("all"))


def files_under(*roots: Path) -> Iterator[Path]:
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            yield from (p for p in root.rglob("*") if p.is_file())


def snapshot(*roots: Path) -> dict[str, tuple[int, int, int]]:
    """(mtime_ns, inode, size) of every file under ``roots``: unchanged means untouched."""
    out = {}
    for f in sorted(files_under(*roots)):
        st = f.stat()
        out[str(f)] = (st.st_mtime_ns, st.st_ino, st.st_size)
    return out


def contents(*roots: Path) -> dict[str, tuple[int, str]]:
    """(inode, md5) of every file under ``roots``: the same files with the same bytes.

    Every job writes a temporary file and renames it, so a rerun job gives a new inode;
    a stage may touch its upstream (new file times) but never rewrite it.
    """
    return {
        str(f): (f.stat().st_ino, hashlib.md5(f.read_bytes()).hexdigest())
        for f in sorted(files_under(*roots))
    }


def lock_outs(workdir: Path) -> dict[str, list[str]]:
    lock = yaml.safe_load((workdir / "dvc.lock").read_text())
    return {name: [o["path"] for o in st.get("outs", [])] for name, st in lock["stages"].items()}


def same_checkpoint(a: Path, b: Path) -> bool:
    """Same tensors and values in two checkpoints.

    Not a byte comparison: torch.save names the zip archive's folder after the file it
    writes, and prunetime.io writes checkpoints under a random temporary name first.
    """
    import torch

    def same(x: Any, y: Any) -> bool:
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, list | tuple):
            return type(x) is type(y) and len(x) == len(y) and all(map(same, x, y))
        return x == y

    return same(
        torch.load(a, weights_only=True, map_location="cpu"),
        torch.load(b, weights_only=True, map_location="cpu"),
    )


def expected_jobs(cfg: dict[str, Any]) -> Counter[str]:
    """Jobs of one full run of ``cfg``: what `dvc repro` must run, each exactly once."""
    n_dense = len(cfg["architectures"]) * len(cfg["seeds"])
    n_prune = n_dense * len(cfg["pruning"]["methods"]) * len(cfg["pruning"]["amounts"])
    return Counter(
        prepare_data=1, train_dense=n_dense, jacobians=n_dense, prune=n_prune, retrain=n_prune,
        bounds=1, report=1, summary=1,
    )  # fmt: skip


def readme_dvc_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("\n## Using DVC\n", 1)[1].split("\n## ", 1)[0]


# ------------------------------------------------------------------ the shared repository


@dataclass(frozen=True)
class DvcRepo:
    path: Path
    env: dict[str, str]
    first_output: str  # what `dvc repro` printed in the fresh repository
    first_metrics: bytes  # results/<study>/metrics.json after it

    @property
    def res(self) -> Path:
        return self.path / "results" / STUDY

    @property
    def upstream_of_bounds(self) -> list[Path]:
        return [self.path / "data" / "prepared", *(self.res / d for d in ("dense", "prune"))]

    def copy(self, dest: Path) -> DvcRepo:
        """A `cp -a` copy (cache, git history, Snakemake records) to change freely."""
        subprocess.run(["cp", "-a", str(self.path), str(dest)], check=True)
        return replace(self, path=dest)


def new_repo(dest: Path, mirror: Path, scratch: Path) -> DvcRepo:
    """A clone-like project with the tiny config, committed, then `dvc repro` and dvc.lock."""
    dest.mkdir(parents=True)
    project_copy(dest)
    skip = shutil.ignore_patterns("__pycache__", "cache", "tmp", "config.local")
    for part in DVC_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=skip)
        else:
            shutil.copy2(src, dest / part)
    (dest / CONFIG).write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
    env = tool_env(mirror, scratch)
    git(dest, env, "init", "-q", "-b", "main")
    git(dest, env, "add", "-A")
    git(dest, env, "commit", "-qm", "project with the tiny study")
    first = dvc(dest, env, "repro")
    git(dest, env, "add", "dvc.lock")
    git(dest, env, "commit", "-qm", "tiny study reproduced")
    metrics = (dest / "results" / STUDY / "metrics.json").read_bytes()
    return DvcRepo(dest, env, first, metrics)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, mnist_mirror: Path) -> DvcRepo:
    """The tiny study reproduced once with `dvc repro`, its dvc.lock committed.

    Tests use it read-only (a no-op repro, plots) or copy it.
    """
    root = tmp_path_factory.mktemp("dvc")
    return new_repo(root / "repo", mnist_mirror, root)


@dataclass(frozen=True)
class Experiment:
    repo: DvcRepo
    output: str
    before: dict[str, tuple[int, str]]  # contents() of the unchanged phases before it


@pytest.fixture(scope="module")
def experiment(base: DvcRepo, tmp_path_factory: pytest.TempPathFactory) -> Experiment:
    """A copy of ``base`` after `dvc exp run -n gq05 -S <config>:<EXPERIMENT>`."""
    repo = base.copy(tmp_path_factory.mktemp("dvc_exp") / "repo")
    before = contents(*repo.upstream_of_bounds, repo.res / "retrain")
    out = dvc(repo.path, repo.env, "exp", "run", "-n", "gq05", "-S", f"{CONFIG}:{EXPERIMENT}")
    return Experiment(repo, out, before)


# ------------------------------------------------------------------------------ tests


def test_repro_runs_every_phase_and_job_once(base: DvcRepo) -> None:
    out = base.first_output
    assert stages_run(out) == STAGES
    assert rules_run(out) == expected_jobs(tiny_config())
    assert "Data and pipelines are up to date" in dvc(base.path, base.env, "status")
    # Every file the workflow wrote is versioned by exactly one stage (checkpoints, tables,
    # figures, logs, benchmarks): nothing is left outside the cache.
    outs = lock_outs(base.path)
    assert set(outs) == set(STAGES)
    owners: dict[str, list[str]] = {}
    for stage, paths in outs.items():
        for p in paths:
            for f in files_under(base.path / p):
                owners.setdefault(str(f.relative_to(base.path)), []).append(stage)
    for f in files_under(base.res, base.path / "data" / "prepared"):
        rel = str(f.relative_to(base.path))
        assert len(owners.get(rel, [])) == 1, f"{rel} is owned by {owners.get(rel)}"
    dense_ckpts = [p for p in owners if p.endswith("dense.pt")]
    assert dense_ckpts and all(owners[p] == ["dense"] for p in dense_ckpts)
    # DVC added no .gitignore files (results/ and data/ are ignored already) and the
    # working tree is clean: everything else lives in dvc.lock.
    assert git(base.path, base.env, "status", "--porcelain").strip() == ""
    # The headline metrics: dense accuracy, mean retraining iterations, bound coverage.
    shown = json.loads(dvc(base.path, base.env, "metrics", "show", "--json"))
    metrics = shown[""]["data"][f"results/{STUDY}/metrics.json"]["data"]
    assert 0.5 < metrics["dense"]["lenet300100/seed0"]["test_acc"] <= 1
    retrain = metrics["retrain"]["lenet300100/random"]
    assert retrain["runs"] == 4 and 0 < retrain["mean_iterations"] <= 40
    assert 0 <= retrain["coverage_fit"] <= 1 and retrain["gamma_fit"] > 0


def test_second_repro_does_nothing(base: DvcRepo) -> None:
    before = snapshot(base.res, base.path / "data" / "prepared")
    out = dvc(base.path, base.env, "repro")
    assert stages_run(out) == [] and not rules_run(out)
    assert "Data and pipelines are up to date" in out
    assert snapshot(base.res, base.path / "data" / "prepared") == before


def test_exp_run_reruns_only_dependent_phases_and_metrics_diff_shows_it(
    experiment: Experiment,
) -> None:
    repo, out = experiment.repo, experiment.output
    assert stages_run(out) == ["bounds", "report"]
    assert rules_run(out) == Counter(bounds=1, report=1, summary=1)
    after = contents(*repo.upstream_of_bounds, repo.res / "retrain")
    assert after == experiment.before, "results of unchanged phases were rewritten"

    metrics_file = f"results/{STUDY}/metrics.json"
    diff = json.loads(dvc(repo.path, repo.env, "metrics", "diff", "--json"))[metrics_file]
    key = "retrain.lenet300100/random.gamma_fit"
    assert diff[key]["new"] != diff[key]["old"], diff
    # Dense training and retraining did not run again: their numbers cannot move.
    assert not any(k.startswith("dense.") or k.endswith(".mean_iterations") for k in diff)

    shown = json.loads(dvc(repo.path, repo.env, "exp", "show", "--json"))
    head = next(r for r in shown if r["rev"] != "workspace")
    exps = {e["name"]: e["revs"][0]["data"] for e in head["experiments"] or []}
    assert set(exps) == {"gq05"}
    params = exps["gq05"]["params"][CONFIG]["data"]
    assert params["bounds"]["gamma_quantile"] == 0.5
    exp_metrics = exps["gq05"]["metrics"][metrics_file]["data"]
    assert exp_metrics == json.loads((repo.res / "metrics.json").read_text())
    assert exp_metrics != json.loads(experiment.repo.first_metrics)


def test_checkout_of_older_config_recomputes_nothing_the_cache_holds(
    experiment: Experiment, tmp_path: Path
) -> None:
    repo = experiment.repo.copy(tmp_path / "repo")
    path, env, res = repo.path, repo.env, repo.res
    exp_metrics = (res / "metrics.json").read_bytes()
    git(path, env, "add", CONFIG, "dvc.lock")
    git(path, env, "commit", "-qm", f"experiment {EXPERIMENT}")
    # Back to the config before the experiment: `dvc checkout` restores its results.
    git(path, env, "checkout", "-q", "HEAD~1")
    dvc(path, env, "checkout")
    assert (res / "metrics.json").read_bytes() == repo.first_metrics
    # Worst case for Snakemake's file-time rule, as a checkout in another order could leave
    # it: the data and dense checkpoints newer than everything after them, while
    # Snakemake's records (.snakemake/) still hold the experiment's params.
    now = time.time()
    for f in files_under(res):
        os.utime(f, (now - 3600, now - 3600))
    for f in files_under(path / "data" / "prepared", res / "dense"):
        os.utime(f, (now, now))
    out = dvc(path, env, "repro")
    assert stages_run(out) == [] and not rules_run(out)
    assert "Data and pipelines are up to date" in out
    # A change only the report depends on runs the report alone: the stage adopts its
    # upstream (touch: same bytes, new times and records) and Snakemake redoes nothing else.
    cfg = yaml.safe_load((path / CONFIG).read_text())
    cfg["report"]["dpi"] = 160
    (path / CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))
    before = contents(*repo.upstream_of_bounds, res / "retrain", res / "tables")
    out = dvc(path, env, "repro")
    assert stages_run(out) == ["report"] and rules_run(out) == Counter(report=1, summary=1)
    assert contents(*repo.upstream_of_bounds, res / "retrain", res / "tables") == before
    # Forward to the experiment's commit without `dvc checkout`: repro takes bounds and
    # report from DVC's run cache instead of running them.
    git(path, env, "checkout", "-q", "-f", "main")
    out = dvc(path, env, "repro")
    assert stages_run(out) == [] and not rules_run(out)
    assert stages_restored(out) == ["bounds", "report"]
    assert (res / "metrics.json").read_bytes() == exp_metrics
    assert "Data and pipelines are up to date" in dvc(path, env, "status")


def test_push_pull_moves_checkpoints_to_a_clone(base: DvcRepo, tmp_path: Path) -> None:
    repo = base.copy(tmp_path / "repo")
    store, clone = tmp_path / "store", tmp_path / "clone"
    # The one documented command, with the README's folder replaced by a scratch one.
    documented = re.search(r"`(dvc remote add -d \S+) (\S+)`", readme_dvc_section())
    assert documented, "README 'Using DVC' documents no `dvc remote add -d <name> <folder>`"
    dvc(repo.path, repo.env, *documented[1].split()[1:], str(store))
    git(repo.path, repo.env, "add", ".dvc/config")
    git(repo.path, repo.env, "commit", "-qm", "local DVC remote")
    dvc(repo.path, repo.env, "push")
    assert any(p.is_file() for p in store.rglob("*"))

    git(tmp_path, repo.env, "clone", "-q", str(repo.path), str(clone))
    assert not (clone / "results").exists() and not (clone / ".snakemake").exists()
    dvc(clone, repo.env, "pull")
    ckpts = sorted(p.relative_to(repo.path) for p in repo.res.rglob("*.pt"))
    assert any(p.name == "dense.pt" for p in ckpts) and any("prune" in p.parts for p in ckpts)
    for rel in [*ckpts, Path("data/prepared/mnist.pt")]:
        assert (clone / rel).read_bytes() == (repo.path / rel).read_bytes(), rel
    # The clone has no Snakemake records and fresh file times; nothing is recomputed.
    out = dvc(clone, repo.env, "repro")
    assert stages_run(out) == [] and "Data and pipelines are up to date" in out


def test_plots_show_writes_html(base: DvcRepo, tmp_path: Path) -> None:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    plots = {k: v for item in spec["plots"] for k, v in item.items()}
    rendered = json.loads(dvc(base.path, base.env, "plots", "show", "--json"))
    assert not rendered.get("errors"), rendered.get("errors")
    assert set(rendered["data"]) == set(plots)
    for name, definition in plots.items():
        content = rendered["data"][name][0]["content"]
        assert content["data"]["values"], f"plot {name} has no data"
        enc = content["spec"]["encoding"]
        assert content["title"] == definition["title"]
        assert enc["x"]["title"] == definition["x_label"]
        assert enc["y"]["title"] == definition["y_label"]
    out_dir = tmp_path / "plots"
    dvc(base.path, base.env, "plots", "show", "-o", str(out_dir))
    html = (out_dir / "index.html").read_text()
    assert "vegaEmbed" in html
    for definition in plots.values():
        assert json.dumps(definition["title"])[1:-1] in html


def test_two_clean_runs_give_byte_identical_metrics(
    base: DvcRepo, tmp_path: Path, mnist_mirror: Path
) -> None:
    """The DVC run of ``base`` against a second clean run of the same config.

    The second run is plain Snakemake in a fresh project copy: the same jobs without the
    stage overhead (DVC only decides which phases run; the bytes come from the jobs).
    """
    second = tmp_path / "repo"
    second.mkdir()
    project_copy(second)
    (second / CONFIG).write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
    res = run_preset(second, CONFIG, mnist_mirror) / "results" / STUDY
    assert (res / "metrics.json").read_bytes() == base.first_metrics
    # The summary tables too (runs.csv and the dense metrics hold wall times, which differ
    # from run to run by nature), and every checkpoint's tensors.
    for table in ("summary.csv", "netdev.csv"):
        assert (res / "tables" / table).read_bytes() == (
            base.res / "tables" / table
        ).read_bytes(), table
    ckpts = [p.relative_to(base.res) for p in base.res.rglob("*.pt")]
    assert any(p.name == "dense.pt" for p in ckpts) and any("prune" in p.parts for p in ckpts)
    for rel in ckpts:
        assert same_checkpoint(base.res / rel, res / rel), rel


# ------------------------------------------------------- dvc.yaml against the workflow


def dvc_spec() -> dict[str, Any]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def local_imports(path: Path) -> set[Path]:
    """Project files a script or library module imports, transitively."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name == "_common":
                    cand = REPO / "scripts" / "_common.py"
                elif name.split(".")[0] == "prunetime":
                    # Importing a submodule runs the package's __init__ first.
                    init = REPO / "src" / "prunetime" / "__init__.py"
                    if init not in seen:
                        seen.add(init)
                        todo.append(init)
                    cand = REPO / "src" / Path(*name.split(".")).with_suffix(".py")
                else:
                    continue
                if cand.is_file() and cand not in seen:
                    seen.add(cand)
                    todo.append(cand)
    return seen


def test_stage_deps_cover_the_code_each_phase_runs() -> None:
    """A library module a phase imports but dvc.yaml omits would leave stale results."""
    for name, stage in dvc_spec()["stages"].items():
        deps = {REPO / d for d in stage["deps"] if "${" not in d}
        scripts = [d for d in deps if d.parent.name == "scripts" and d.name != "_common.py"]
        assert scripts, f"stage {name} lists no script"
        needed = set().union(*(local_imports(s) for s in scripts))
        missing = sorted(str(p.relative_to(REPO)) for p in needed - deps)
        assert not missing, f"dvc.yaml stage {name!r} misses deps {missing}"
        for d in deps:
            assert d.is_file(), f"stage {name!r}: dep {d.relative_to(REPO)} does not exist"


def test_stages_run_each_workflow_rule_once_through_snakemake() -> None:
    """Snakemake stays the one definition: every rule belongs to exactly one DVC stage."""
    spec = dvc_spec()
    assert spec["vars"][0] == {"cfg": CONFIG}
    assert spec["vars"][1].startswith(f"{CONFIG}:")
    owner: dict[str, str] = {}
    for name, stage in spec["stages"].items():
        cmds = stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]
        *touches, run_phase = (c.split() for c in cmds)
        for cmd in [*touches, run_phase]:
            assert cmd[0] == "snakemake" and cmd[cmd.index("--configfile") + 1] == "${cfg}"
        # Upstream phases are adopted (touched, never deleted or rerun), then the phase runs.
        assert len(touches) == (name != "data"), name
        for cmd in touches:
            assert "--touch" in cmd and "--keep-incomplete" in cmd, name
        assert "--touch" not in run_phase
        allowed = run_phase[run_phase.index("--allowed-rules") + 1 :]
        for rule in allowed:
            assert rule not in owner, f"rule {rule} in stages {owner[rule]} and {name}"
            owner[rule] = name
    rules = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        rules |= set(re.findall(r"^rule (\w+):", smk.read_text(), re.M))
    rules -= NOT_UNDER_DVC
    assert rules == set(owner), (
        f"rules without a DVC stage: {sorted(rules - set(owner))}; "
        f"stages naming unknown rules: {sorted(set(owner) - rules)}"
    )


@pytest.mark.parametrize("preset", [CONFIG, "config/quick.yaml"])
def test_stage_params_exist_in_the_presets(preset: str) -> None:
    cfg = yaml.safe_load((REPO / preset).read_text())
    for stage in dvc_spec()["stages"].values():
        for entry in stage["params"]:
            for keys in entry.values():
                for key in keys:
                    node: Any = cfg
                    for part in key.split("."):
                        assert isinstance(node, dict) and part in node, f"{preset}: no {key!r}"
                        node = node[part]
