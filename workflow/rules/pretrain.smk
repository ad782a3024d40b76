# Pre-training threshold study (THEORY.md C): for every dataset size m and seed, pre-train a
# two-layer ReLU net with checkpoints (pretrain_train), run greedy forward selection at every
# checkpoint (pretrain_prune), then estimate T*(m) and fit it against m (pretrain_threshold)
# and draw the figures (pretrain_report). Active when the config has a `pretrain` section.
from prunetime.plan import check_pretrain_config, pretrain_params_json as pretrain_params

PRE = f"{RES}/pretrain"
PRE_LOGS = f"{LOGS}/pretrain"
PRE_BENCH = f"{BENCH}/pretrain"
HAS_PRETRAIN = "pretrain" in config

if HAS_PRETRAIN:
    try:
        check_pretrain_config(config)
    except ConfigError as err:
        raise WorkflowError(str(err)) from None
PRE_M = config["pretrain"]["m"] if HAS_PRETRAIN else []


wildcard_constraints:
    m="[0-9]+",


# One job per (m, seed): the whole training run with all its checkpoints in one process.
rule pretrain_train:
    input:
        data=PREPARED,
    output:
        ckpt=f"{PRE}/train/m{{m}}/seed{{seed}}/checkpoints.pt",
        metrics=f"{PRE}/train/m{{m}}/seed{{seed}}/train.json",
    params:
        cfg=pretrain_params(config, "train"),
        device=DEVICE,
    log:
        f"{PRE_LOGS}/train/m{{m}}_seed{{seed}}.log",
    benchmark:
        f"{PRE_BENCH}/train/m{{m}}_seed{{seed}}.tsv"
    threads: THREADS
    resources:
        gpu=GPUS,
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/pretrain_train.py --params {params.cfg:q} --m {wildcards.m} "
        "--seed {wildcards.seed} --data {input.data:q} --ckpt {output.ckpt:q} "
        "--metrics {output.metrics:q} --device {params.device} --threads {threads} > {log:q} 2>&1"


# Greedy selection (both variants), fine-tuning and evaluation at every checkpoint of a run.
rule pretrain_prune:
    input:
        data=PREPARED,
        ckpt=rules.pretrain_train.output.ckpt,
    output:
        rows=f"{PRE}/prune/m{{m}}/seed{{seed}}/rows.csv",
        metrics=f"{PRE}/prune/m{{m}}/seed{{seed}}/prune.json",
    params:
        cfg=pretrain_params(config, "prune"),
        device=DEVICE,
    log:
        f"{PRE_LOGS}/prune/m{{m}}_seed{{seed}}.log",
    benchmark:
        f"{PRE_BENCH}/prune/m{{m}}_seed{{seed}}.tsv"
    threads: THREADS
    resources:
        gpu=GPUS,
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/pretrain_prune.py --params {params.cfg:q} --m {wildcards.m} "
        "--seed {wildcards.seed} --data {input.data:q} --ckpt {input.ckpt:q} "
        "--out-rows {output.rows:q} --out-metrics {output.metrics:q} --device {params.device} "
        "--threads {threads} > {log:q} 2>&1"


rule pretrain_threshold:
    input:
        rows=expand(rules.pretrain_prune.output.rows, m=PRE_M, seed=SEEDS),
        metrics=expand(rules.pretrain_prune.output.metrics, m=PRE_M, seed=SEEDS),
    output:
        curves=f"{PRE}/tables/curves.csv",
        thresholds=f"{PRE}/tables/thresholds.csv",
        summary=f"{PRE}/tables/threshold_summary.csv",
        fits=f"{PRE}/tables/fits.csv",
        fits_md=f"{PRE}/tables/fits.md",
        metrics=f"{PRE}/metrics.json",
    params:
        cfg=pretrain_params(config, "threshold"),
    log:
        f"{PRE_LOGS}/threshold.log",
    benchmark:
        f"{PRE_BENCH}/threshold.tsv"
    threads: 1
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/pretrain_threshold.py --params {params.cfg:q} --rows {input.rows:q} "
        "--metrics {input.metrics:q} --out-curves {output.curves:q} "
        "--out-thresholds {output.thresholds:q} --out-summary {output.summary:q} "
        "--out-fits {output.fits:q} --out-fits-md {output.fits_md:q} "
        "--out-metrics {output.metrics:q} > {log:q} 2>&1"


STUDY_C = "C. Pre-training threshold"
PRE_TABLES = f"{PRE}/tables/display"


rule pretrain_report:
    input:
        curves=rules.pretrain_threshold.output.curves,
        thresholds=rules.pretrain_threshold.output.thresholds,
        summary=rules.pretrain_threshold.output.summary,
        fits=rules.pretrain_threshold.output.fits,
        fits_md=rules.pretrain_threshold.output.fits_md,
        metrics=rules.pretrain_threshold.output.metrics,
    output:
        loss=report_item(
            f"{PRE}/figures/pruned_loss_vs_pretraining.{FMT}",
            STUDY_C,
            "Training curves",
            "pretrain_loss",
            "figure",
            "pruned-subnetwork training loss vs pre-training iterations, per m",
        ),
        accuracy=report_item(
            f"{PRE}/figures/accuracy_vs_pretraining.{FMT}",
            STUDY_C,
            "Training curves",
            "pretrain_accuracy",
            "figure",
            "training and test accuracy vs pre-training iterations",
        ),
        threshold=report_item(
            f"{PRE}/figures/threshold_vs_m.{FMT}",
            STUDY_C,
            "Threshold T*(m)",
            "pretrain_threshold",
            "figure",
            "T*(m) with the log, power and linear fits",
        ),
        normalised=report_item(
            f"{PRE}/figures/normalised_threshold_vs_m.{FMT}",
            STUDY_C,
            "Threshold T*(m)",
            "pretrain_normalised",
            "figure",
            "T* · η · λ0 vs m for every definition",
        ),
        t_setup=report_item(
            f"{PRE_TABLES}/pretrain_setup.html",
            STUDY_C,
            "Settings",
            "pretrain_table_setup",
            "table",
            "settings read back from the tables",
        ),
        t_tstar=report_item(
            f"{PRE_TABLES}/threshold_by_m.html",
            STUDY_C,
            "Threshold T*(m)",
            "pretrain_table_tstar",
            "table",
            "T*(m) with CI, λ0 and plateau share",
        ),
        t_sensitivity=report_item(
            f"{PRE_TABLES}/threshold_definitions.html",
            STUDY_C,
            "Threshold T*(m)",
            "pretrain_table_sensitivity",
            "table",
            "mean T*(m) under every definition",
        ),
        t_fits=report_item(
            f"{PRE_TABLES}/threshold_fits.html",
            STUDY_C,
            "Threshold T*(m)",
            "pretrain_table_fits",
            "table",
            "fitted laws with R², AIC, slope CI",
        ),
        t_dense=report_item(
            f"{PRE_TABLES}/pretrain_dense.html",
            STUDY_C,
            "Training curves",
            "pretrain_table_dense",
            "table",
            "dense network at the last checkpoint per m",
        ),
        summary_md=f"{PRE}/summary.md",
    params:
        cfg=json.dumps({"report": config["report"], "study": STUDY}, sort_keys=True),
        figdir=lambda wc, output: str(Path(output.loss).parent),
        tabledir=lambda wc, output: str(Path(output.t_setup).parent),
    log:
        f"{PRE_LOGS}/report.log",
    benchmark:
        f"{PRE_BENCH}/report.tsv"
    # The figures are drawn in parallel (style.render_all) at the end of the study, when
    # nothing else runs beside the job. Capped at --cores.
    threads: 2
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/pretrain_report.py --params {params.cfg:q} --curves {input.curves:q} "
        "--thresholds {input.thresholds:q} --summary {input.summary:q} --fits {input.fits:q} "
        "--fits-md {input.fits_md:q} --metrics {input.metrics:q} --out-dir {params.figdir:q} "
        "--out-md {output.summary_md:q} --table-dir {params.tabledir:q} --threads {threads} "
        "> {log:q} 2>&1"


# What `rule all` asks for when the config has a pretrain section.
PRETRAIN_TARGETS = rules.pretrain_report.output if HAS_PRETRAIN else []
