"""Orchestration costs: job start-up, dry-run time, parallel speedup, and per-rule time/memory.

Run:
  python benchmarks/bench_workflow.py startup            # job start to first training step
  python benchmarks/bench_workflow.py dryrun [--configfile config/config.yaml]
  python benchmarks/bench_workflow.py cores              # quick preset, --cores 2 vs --cores 1
  python benchmarks/bench_workflow.py rules results/<study>   # where a finished run's time went

``startup`` runs, in a fresh interpreter, what a retraining job runs before its first step
(the rule script's imports, loading the prepared data, building the model, one ensemble
step) and reports the time from process start to that step beside a bare ``import torch``
in the same run, and whether any heavy library (torchvision, pandas, seaborn, matplotlib,
scikit-learn) was imported. ``rules`` reads Snakemake's per-job benchmark files (``s`` wall
seconds, ``cpu_time``, ``max_rss`` MB) and prints per-rule totals, means and peak memory (on
a shared machine the CPU time is the steadier guide to what the rules cost).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _common import MIRROR, ROOT

HEAVY = ("torchvision", "pandas", "seaborn", "matplotlib", "sklearn", "scipy")

STARTUP = r"""
import sys, time
sys.path.insert(0, {scripts!r})
import _common  # noqa: F401  (what every rule script imports first)
import torch
from prunetime.study import setup_torch
from prunetime.data import load_prepared
from prunetime.ensemble import TrialSpec, retrain_trials
from prunetime.models import build_model
setup_torch("cpu", 1)
data = load_prepared({prepared!r})
model = build_model("lenet300100")
state = {{k: v.detach().clone() for k, v in model.named_parameters()}}
retrain_trials(model, [TrialSpec(state, None, torch.Generator().manual_seed(0))], data.train,
               data.val, target_loss=-1.0, eps=1e-9, optimizer="adam", lr=0.01,
               batch_size=128, max_iters=1, batched=False)
print(time.time())
print(",".join(m for m in {heavy!r} if m in sys.modules))
"""


def _spawn_seconds(code: str) -> tuple[float, str]:
    """Seconds from spawning ``python -c code`` to the time it prints, and its 2nd line."""
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.splitlines()
    return float(out[0]) - t0, out[1] if len(out) > 1 else ""


def startup(repeats: int) -> None:
    from prunetime.data import prepare_dataset

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "mnist.pt"
        prepare_dataset("mnist", Path(tmp) / "raw", prepared, 5000, 0, mirror=MIRROR)
        job = STARTUP.format(scripts=str(ROOT / "scripts"), prepared=str(prepared), heavy=HEAVY)
        bare = "import time, torch; print(time.time())"
        jobs, bares, heavy = [], [], ""
        for _ in range(repeats):
            bares.append(_spawn_seconds(bare)[0])
            secs, heavy = _spawn_seconds(job)
            jobs.append(secs)
    print(f"bare 'import torch'                 {min(bares):6.2f} s (best of {repeats})")
    print(f"retraining job to its first step    {min(jobs):6.2f} s (best of {repeats})")
    print(f"ratio job / bare torch import       {min(jobs) / min(bares):6.2f}x   (target: <= 2 s)")
    print(f"heavy libraries imported by the job: {heavy or 'none'}")


def dryrun(configfile: str, workdir: Path, repeats: int) -> None:
    cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "--configfile", configfile]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=workdir, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import snakemake.cli"], check=True)
    base = time.perf_counter() - t0
    print(f"snakemake -n {configfile} in {workdir}: {min(times):.2f} s (best of {repeats})")
    print(f"bare 'import snakemake.cli': {base:.2f} s; ratio {min(times) / base:.1f}x")


def cores() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from workflow_helpers import project_copy

    env = {**os.environ, "PRUNETIME_DATA_MIRROR": str(MIRROR)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            (Path(tmp) / f"c{n}").mkdir()
            wd = project_copy(Path(tmp) / f"c{n}")
            prep = [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile"]
            # data preparation is shared set-up, not part of the comparison
            subprocess.run(
                [*prep, "config/quick.yaml", "--until", "prepare_data"],
                cwd=wd, env=env, check=True, capture_output=True,
            )  # fmt: skip
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "snakemake", "--cores", str(n), "--configfile",
                 "config/quick.yaml"],
                cwd=wd, env=env, check=True, capture_output=True,
            )  # fmt: skip
            walls[n] = time.perf_counter() - t0
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"quick preset: --cores 1 {walls[1]:.1f} s, --cores 2 {walls[2]:.1f} s")
    print(f"speedup {walls[1] / walls[2]:.2f}x (target >= 1.7x)")


def rules(results: Path) -> None:
    per: dict[str, list[tuple[float, float]]] = defaultdict(list)
    cpu: dict[str, float] = defaultdict(float)
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        rel = tsv.relative_to(results / "benchmarks")
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        with open(tsv) as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                rss = float(row["max_rss"]) if row.get("max_rss") not in (None, "", "-") else 0
                per[rule].append((float(row["s"]), rss))
                cpu[rule] += float(row.get("cpu_time") or 0)
    if not per:
        raise SystemExit(f"no benchmark files under {results / 'benchmarks'}")
    total = sum(s for v in per.values() for s, _ in v)
    print(
        f"{'rule':<16} {'jobs':>5} {'total s':>9} {'share':>6} {'mean s':>8} {'cpu s':>8} "
        f"{'peak MB':>8}"
    )
    for rule, v in sorted(per.items(), key=lambda kv: -sum(s for s, _ in kv[1])):
        t = sum(s for s, _ in v)
        print(
            f"{rule:<16} {len(v):5d} {t:9.1f} {t / total:6.1%} {t / len(v):8.2f} "
            f"{cpu[rule]:8.1f} {max(r for _, r in v):8.0f}"
        )
    peak = max(r for v in per.values() for _, r in v)
    print(
        f"job time in all rules {total:.1f} s wall, {sum(cpu.values()):.1f} s CPU; peak RSS of "
        f"any job {peak:.0f} MB (target 1536)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("startup")
    s.add_argument("--repeats", type=int, default=3)
    d = sub.add_parser("dryrun")
    d.add_argument("--configfile", default="config/config.yaml")
    d.add_argument("--workdir", type=Path, default=ROOT)
    d.add_argument("--repeats", type=int, default=3)
    sub.add_parser("cores")
    r = sub.add_parser("rules")
    r.add_argument("results", type=Path)
    a = p.parse_args()
    if a.what == "startup":
        startup(a.repeats)
    elif a.what == "dryrun":
        dryrun(a.configfile, a.workdir, a.repeats)
    elif a.what == "cores":
        cores()
    else:
        rules(a.results)


if __name__ == "__main__":
    main()
