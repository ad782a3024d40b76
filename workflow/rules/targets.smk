# One aggregate target per phase of the workflow whose jobs have wildcards.
#
# `snakemake <rule name>` only works for rules without wildcards, so a phase such as dense
# training (one job per architecture and seed) needs a rule that asks for all of its
# outputs. `dvc.yaml` runs each phase through these targets (one DVC stage per phase, see
# its header); they are also handy on the command line: `snakemake all_dense`.
# prepare_data, bounds and report have no wildcards and are targets as they are.


localrules:
    all_dense,
    all_retrain,


rule all_dense:
    input:
        expand(rules.train_dense.output, arch=ARCHS, seed=SEEDS),


rule all_retrain:
    input:
        job_files(rules.prune.output),
        job_files(rules.retrain.output),
