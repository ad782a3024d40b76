# Structure-discovery study (THEORY.md D): train gated networks from scratch with unit and
# layer gates (gates_train: one job per network, variant, lambda and seed), the same network
# without gates (gates_dense), magnitude prune-then-retrain at the combined variant's
# parameter count (gates_magnitude), then tables (gates_summary) and figures (gates_report).
# Active when the config has a `gates` section.
from prunetime.plan import (
    check_gates_config,
    fmt_lambda,
    gates_params_json as gates_params,
)

GATES = f"{RES}/gates"
GATES_LOGS = f"{LOGS}/gates"
GATES_BENCH = f"{BENCH}/gates"
HAS_GATES = "gates" in config

if HAS_GATES:
    try:
        check_gates_config(config)
    except ConfigError as err:
        raise WorkflowError(str(err)) from None
GCFG = config["gates"] if HAS_GATES else {}
GNETS = list(GCFG.get("networks", {}))
GVARIANTS = GCFG.get("variants", [])
GLAMS = [fmt_lambda(x) for x in GCFG.get("lambdas", [])]
GDENSE = GCFG.get("dense", False)
GMAG = GCFG.get("magnitude", {}).get("enabled", False)
GT_DIR = f"{GATES}/train/{{net}}/{{variant}}/lam{{lam}}/seed{{seed}}"
GD_DIR = f"{GATES}/dense/{{net}}/seed{{seed}}"
GM_DIR = f"{GATES}/magnitude/{{net}}/lam{{lam}}/seed{{seed}}"
# Every run's metrics, epochs and thetas file, in a fixed order (the summary's inputs).
GATES_RUNS = {
    key: expand(f"{GT_DIR}/{key}.{ext}", net=GNETS, variant=GVARIANTS, lam=GLAMS, seed=SEEDS)
    + (expand(f"{GD_DIR}/{key}.{ext}", net=GNETS, seed=SEEDS) if GDENSE else [])
    + (
        expand(f"{GM_DIR}/metrics.json", net=GNETS, lam=GLAMS, seed=SEEDS)
        if GMAG and key == "metrics"
        else []
    )
    for key, ext in (("metrics", "json"), ("epochs", "csv"), ("thetas", "csv"))
}


wildcard_constraints:
    net="[A-Za-z0-9_]+",
    variant="combined|unit|layer",
    lam="[0-9.e+-]+",


rule gates_train:
    input:
        data=PREPARED,
    output:
        model=f"{GT_DIR}/model.pt",
        metrics=f"{GT_DIR}/metrics.json",
        epochs=f"{GT_DIR}/epochs.csv",
        thetas=f"{GT_DIR}/thetas.csv",
    params:
        cfg=gates_params(config, "train"),
        device=DEVICE,
    log:
        f"{GATES_LOGS}/train/{{net}}_{{variant}}_lam{{lam}}_seed{{seed}}.log",
    benchmark:
        f"{GATES_BENCH}/train/{{net}}_{{variant}}_lam{{lam}}_seed{{seed}}.tsv"
    threads: THREADS
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/gates_train.py --params {params.cfg:q} --net {wildcards.net} "
        "--variant {wildcards.variant} --lam {wildcards.lam} --seed {wildcards.seed} "
        "--data {input.data:q} --out-model {output.model:q} --out-metrics {output.metrics:q} "
        "--out-epochs {output.epochs:q} --out-thetas {output.thetas:q} "
        "--device {params.device} --threads {threads} > {log:q} 2>&1"


rule gates_dense:
    input:
        data=PREPARED,
    output:
        model=f"{GD_DIR}/model.pt",
        metrics=f"{GD_DIR}/metrics.json",
        epochs=f"{GD_DIR}/epochs.csv",
        thetas=f"{GD_DIR}/thetas.csv",
    params:
        cfg=gates_params(config, "dense"),
        device=DEVICE,
    log:
        f"{GATES_LOGS}/dense/{{net}}_seed{{seed}}.log",
    benchmark:
        f"{GATES_BENCH}/dense/{{net}}_seed{{seed}}.tsv"
    threads: THREADS
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/gates_train.py --params {params.cfg:q} --net {wildcards.net} "
        "--variant dense --lam 0 --seed {wildcards.seed} --data {input.data:q} "
        "--out-model {output.model:q} --out-metrics {output.metrics:q} "
        "--out-epochs {output.epochs:q} --out-thetas {output.thetas:q} "
        "--device {params.device} --threads {threads} > {log:q} 2>&1"


rule gates_magnitude:
    input:
        data=PREPARED,
        dense_model=rules.gates_dense.output.model,
        dense_metrics=rules.gates_dense.output.metrics,
        budget=f"{GATES}/train/{{net}}/combined/lam{{lam}}/seed{{seed}}/metrics.json",
    output:
        metrics=f"{GM_DIR}/metrics.json",
    params:
        cfg=gates_params(config, "magnitude"),
        device=DEVICE,
    log:
        f"{GATES_LOGS}/magnitude/{{net}}_lam{{lam}}_seed{{seed}}.log",
    benchmark:
        f"{GATES_BENCH}/magnitude/{{net}}_lam{{lam}}_seed{{seed}}.tsv"
    threads: THREADS
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/gates_magnitude.py --params {params.cfg:q} --net {wildcards.net} "
        "--lam {wildcards.lam} --seed {wildcards.seed} --data {input.data:q} "
        "--dense-model {input.dense_model:q} --dense-metrics {input.dense_metrics:q} "
        "--budget-metrics {input.budget:q} --out-metrics {output.metrics:q} "
        "--device {params.device} --threads {threads} > {log:q} 2>&1"


rule gates_summary:
    input:
        metrics=GATES_RUNS["metrics"],
        epochs=GATES_RUNS["epochs"],
        thetas=GATES_RUNS["thetas"],
    output:
        runs=f"{GATES}/tables/runs.csv",
        epochs=f"{GATES}/tables/epochs.csv",
        thetas=f"{GATES}/tables/thetas.csv",
        metrics=f"{GATES}/metrics.json",
    params:
        cfg=gates_params(config, "summary"),
    log:
        f"{GATES_LOGS}/summary.log",
    benchmark:
        f"{GATES_BENCH}/summary.tsv"
    threads: 1
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/gates_summary.py --params {params.cfg:q} --metrics {input.metrics:q} "
        "--epochs {input.epochs:q} --thetas {input.thetas:q} --out-runs {output.runs:q} "
        "--out-epochs {output.epochs:q} --out-thetas {output.thetas:q} "
        "--out-metrics {output.metrics:q} > {log:q} 2>&1"


rule gates_report:
    input:
        runs=rules.gates_summary.output.runs,
        epochs=rules.gates_summary.output.epochs,
        thetas=rules.gates_summary.output.thetas,
    output:
        acc_flops=report(
            f"{GATES}/figures/accuracy_vs_flops.{FMT}",
            category="Structure discovery",
            caption="../report/gates_accuracy_flops.rst",
        ),
        acc_params=report(
            f"{GATES}/figures/accuracy_vs_params.{FMT}",
            category="Structure discovery",
            caption="../report/gates_accuracy_params.rst",
        ),
        thetas=report(
            f"{GATES}/figures/theta_trajectories.{FMT}",
            category="Structure discovery",
            caption="../report/gates_thetas.rst",
        ),
        epoch_time=report(
            f"{GATES}/figures/epoch_time.{FMT}",
            category="Structure discovery",
            caption="../report/gates_epoch_time.rst",
        ),
        summary_md=f"{GATES}/summary.md",
    params:
        cfg=json.dumps({"report": config["report"], "study": STUDY}, sort_keys=True),
        figdir=lambda wc, output: str(Path(output.acc_flops).parent),
    log:
        f"{GATES_LOGS}/report.log",
    benchmark:
        f"{GATES_BENCH}/report.tsv"
    # The figures are drawn in parallel (style.render_all) at the end of the study, when
    # nothing else runs beside the job. Capped at --cores.
    threads: 2
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/gates_report.py --params {params.cfg:q} --runs {input.runs:q} "
        "--epochs {input.epochs:q} --thetas {input.thetas:q} --out-dir {params.figdir:q} "
        "--out-md {output.summary_md:q} --threads {threads} > {log:q} 2>&1"


# What `rule all` asks for when the config has a gates section.
GATES_TARGETS = (
    [rules.gates_report.output, rules.gates_summary.output.metrics] if HAS_GATES else []
)
