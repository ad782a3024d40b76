"""Training jobs start fast: no heavy library and no torch compiler stack before the first step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

JOB = r"""
import sys
sys.path.insert(0, "scripts")
import _common  # noqa: F401  (first import of every rule script)
import torch
from prunetime.study import run_dense, run_prune, run_retrain, setup_torch  # noqa: F401
from prunetime.ensemble import TrialSpec, retrain_trials
from prunetime.models import build_model
from prunetime.data import Split
from prunetime.training import make_optimizer, train_step
setup_torch("cpu", 1)
model = build_model("lenet300100")
x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
train_step(model, make_optimizer("adam", list(model.parameters()), 0.01), x, y)
state = {k: v.detach().clone() for k, v in model.named_parameters()}
specs = [TrialSpec(dict(state), None, torch.Generator().manual_seed(i)) for i in range(2)]
retrain_trials(model, specs, Split(x, y), Split(x, y), target_loss=-1.0, eps=1e-9,
               optimizer="adam", lr=0.01, batch_size=16, max_iters=2)
heavy = ("torchvision", "pandas", "seaborn", "matplotlib", "sklearn", "scipy",
         "torch._dynamo", "torch._inductor")
print(",".join(m for m in heavy if m in sys.modules))
"""


def test_training_jobs_import_no_heavy_library_before_training() -> None:
    """Dense training and batched retraining run without torchvision, pandas, seaborn,
    scikit-learn or torch's compiler stack (each costs a second or more per job)."""
    out = subprocess.run(
        [sys.executable, "-c", JOB], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"imported: {out.stdout.strip()}"


TABLE_JOB = r"""
import sys
sys.path.insert(0, "scripts")
import runpy
for script in ("bounds", "report", "report_summary", "pretrain_report", "pretrain_threshold",
               "gates_report"):
    sys.argv = [script, "--help"]
    try:
        runpy.run_path(f"scripts/{script}.py", run_name="__main__")
    except SystemExit:
        pass
from prunetime import analysis, bounds, curvature, io, report, summary  # noqa: F401
print("torch" in sys.modules)
"""


def test_table_and_report_jobs_import_no_torch() -> None:
    """The bounds, report and summary jobs run one after another at the end of a study (no
    other job can fill the second core): they read tables and JSON only, and importing torch
    would add about 2 s to each."""
    out = subprocess.run(
        [sys.executable, "-c", TABLE_JOB], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "False"
