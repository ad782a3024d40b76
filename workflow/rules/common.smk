# Config validation (before any job), paths and per-job parameter slices.
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from prunetime import catalog
from prunetime.config import ConfigError, validate_config
from prunetime.plan import fmt_amount, gate_priority, job_combos, job_config, job_priority

# Facts about the registered models and methods, cached per source version, so that parsing
# the workflow (every call, dry runs included) does not import torch.
catalog.cache_dir = Path(".snakemake") / "prunetime"

# A --configfile replaces config/config.yaml instead of being merged into it, so a preset
# that drops an architecture or method really drops it. --config overrides still apply.
if workflow.config_settings.configfiles:
    _given = copy.deepcopy(dict(workflow.config_settings.overwrite_config))
    config.clear()
    config.update(_given)

try:
    validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

STUDY = config["study"]
RES = f"{config['results_dir']}/{STUDY}"
LOGS = f"{RES}/logs"
BENCH = f"{RES}/benchmarks"
DATASET = config["data"]["dataset"]
PREPARED = f"{config['data_dir']}/prepared/{DATASET}.pt"
ARCHS = list(config["architectures"])
SEEDS = config["seeds"]
METHODS = config["pruning"]["methods"]
AMOUNTS = [fmt_amount(a) for a in config["pruning"]["amounts"]]
THREADS = config["threads"]
DEVICE = config["device"]
# GPUs each torch job asks the scheduler for: one when the config demands CUDA. With
# `auto` a job uses a GPU only where it happens to get one (and asks for none).
GPUS = 1 if DEVICE == "cuda" else 0


wildcard_constraints:
    arch="[A-Za-z0-9_]+",
    seed="[0-9]+",
    method="[A-Za-z0-9_]+",
    amount="[0-9.e-]+",


def params_json(stage):
    """The job's config slice as JSON: a param, so a change reruns exactly the affected jobs."""
    return lambda wc: json.dumps(job_config(config, wc.arch, stage), sort_keys=True)


def priority_of(wc):
    """The costliest retraining first (plan.job_priority), so that none starts last."""
    return job_priority(config, wc.arch, wc.method, wc.amount)


# Dense training and the Jacobians gate every prune job of their architecture: they go first.
GATE_PRIORITY = gate_priority(config)
COMBOS = job_combos(config)  # (arch, method) pairs: a fully-connected-only method skips convs


def job_files(pattern):
    """Every (arch, seed, method, amount) instance of an output pattern the study runs."""
    return [
        path
        for arch, method in COMBOS
        for path in expand(pattern, arch=arch, seed=SEEDS, method=method, amount=AMOUNTS)
    ]
