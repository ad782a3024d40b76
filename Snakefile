# prunetime: pre-train -> prune -> retrain, measured against the bounds of THEORY.md.
# Run: snakemake --cores all [--configfile config/quick.yaml]
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/dense.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/bounds.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/targets.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/gates.smk"


rule all:
    input:
        rules.report.output if ARCHS else [],
        PRETRAIN_TARGETS,
        rules.summary.output,
        GATES_TARGETS,
    default_target: True
