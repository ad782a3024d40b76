FMT = config["report"]["format"]


rule report:
    input:
        runs=rules.bounds.output.runs,
        summary=rules.bounds.output.summary,
        dense=rules.bounds.output.dense,
        metrics=rules.bounds.output.metrics,
        curves=expand(rules.train_dense.output.curve, arch=ARCHS, seed=SEEDS),
    output:
        iterations=report(
            f"{RES}/figures/iterations_vs_sparsity.{FMT}",
            category="Retraining bounds",
            caption="../report/iterations.rst",
        ),
        accuracy=report(
            f"{RES}/figures/accuracy_vs_sparsity.{FMT}",
            category="Retraining bounds",
            caption="../report/accuracy.rst",
        ),
        dense=report(
            f"{RES}/figures/dense_training.{FMT}",
            category="Dense training",
            caption="../report/dense.rst",
        ),
        netdev=report(
            f"{RES}/figures/netdev_vs_amount.{FMT}",
            category="Net Deviation and retraining conditions",
            caption="../report/netdev.rst",
        ),
        accuracy_amount=report(
            f"{RES}/figures/accuracy_vs_amount.{FMT}",
            category="Net Deviation and retraining conditions",
            caption="../report/accuracy_amount.rst",
        ),
        epochs=report(
            f"{RES}/figures/epochs_vs_amount.{FMT}",
            category="Net Deviation and retraining conditions",
            caption="../report/epochs.rst",
        ),
        summary_md=f"{RES}/summary.md",
        summary_html=f"{RES}/summary.html",
    params:
        cfg=json.dumps({"report": config["report"], "study": STUDY}, sort_keys=True),
        figdir=lambda wc, output: str(Path(output.iterations).parent),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    threads: 1
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/report.py --params {params.cfg:q} --runs {input.runs:q} "
        "--summary {input.summary:q} --dense {input.dense:q} --metrics {input.metrics:q} "
        "--curves {input.curves:q} --out-dir {params.figdir:q} --out-md {output.summary_md:q} "
        "--out-html {output.summary_html:q} > {log:q} 2>&1"
