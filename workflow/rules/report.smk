# Figures, tables and the study summary page. Every figure and display table is a report()
# item of `snakemake --report report.html`, grouped by study (category), topic (subcategory)
# and labels; captions are Jinja templates in workflow/report/ that read snakemake.config.
FMT = config["report"]["format"]
TABLES = f"{RES}/report_tables"  # outside tables/ (the bounds phase owns that folder in DVC)
STUDY_A = "A. Retraining bounds"
STUDY_B = "B. Node pruning and Net Deviation"


include: "report_common.smk"


rule report:
    input:
        runs=rules.bounds.output.runs,
        summary=rules.bounds.output.summary,
        dense=rules.bounds.output.dense,
        metrics=rules.bounds.output.metrics,
        curves=expand(rules.train_dense.output.curve, arch=ARCHS, seed=SEEDS),
    output:
        iterations=report_item(
            f"{RES}/figures/iterations_vs_sparsity.{FMT}",
            STUDY_A,
            "Iterations against the bounds",
            "iterations",
            "figure",
            "retraining iterations vs sparsity, with the bound band",
        ),
        accuracy=report_item(
            f"{RES}/figures/accuracy_vs_sparsity.{FMT}",
            STUDY_A,
            "Accuracy",
            "accuracy",
            "figure",
            "accuracy before / after retraining vs sparsity",
        ),
        dense=report_item(
            f"{RES}/figures/dense_training.{FMT}",
            STUDY_A,
            "Dense training",
            "dense",
            "figure",
            "loss and accuracy of initial training vs step",
        ),
        netdev=report_item(
            f"{RES}/figures/netdev_vs_amount.{FMT}",
            STUDY_B,
            "Net Deviation",
            "netdev",
            "figure",
            "normalised Net Deviation D and its terms vs amount",
        ),
        accuracy_amount=report_item(
            f"{RES}/figures/accuracy_vs_amount.{FMT}",
            STUDY_B,
            "Accuracy",
            "accuracy_amount",
            "figure",
            "accuracy before / after retraining vs pruning amount",
        ),
        epochs=report_item(
            f"{RES}/figures/epochs_vs_amount.{FMT}",
            STUDY_B,
            "Retraining epochs",
            "epochs",
            "figure",
            "retraining epochs vs amount, curvature-based lower bound",
        ),
        t_dense=report_item(
            f"{TABLES}/dense_networks.html",
            STUDY_A,
            "Dense training",
            "table_dense",
            "table",
            "dense accuracies and L(W*) per architecture and seed",
        ),
        t_retrain=report_item(
            f"{TABLES}/retraining_by_method.html",
            STUDY_A,
            "Iterations against the bounds",
            "table_retrain",
            "table",
            "runs, mean iterations, fitted gamma, bound coverage per method",
        ),
        t_summary=report_item(
            f"{TABLES}/retraining_by_amount.html",
            STUDY_A,
            "Iterations against the bounds",
            "table_summary",
            "table",
            "mean iterations with CI and bounds per amount",
        ),
        t_setup=report_item(
            f"{TABLES}/setup.html",
            STUDY_A,
            "Settings",
            "table_setup",
            "table",
            "settings read back from the tables",
        ),
        t_netdev=report_item(
            f"{TABLES}/net_deviation.html",
            STUDY_B,
            "Net Deviation",
            "table_netdev",
            "table",
            "Net Deviation, parameters left and accuracies per amount",
        ),
        t_curvature=report_item(
            f"{TABLES}/curvature_epochs.html",
            STUDY_B,
            "Retraining epochs",
            "table_curvature",
            "table",
            "curvature estimates and the epoch lower bound per amount",
        ),
        summary_md=f"{RES}/summary.md",
        summary_html=f"{RES}/summary.html",
    params:
        cfg=json.dumps({"report": config["report"], "study": STUDY}, sort_keys=True),
        figdir=lambda wc, output: str(Path(output.iterations).parent),
        tabledir=lambda wc, output: str(Path(output.t_dense).parent),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    # The figures are drawn in parallel (style.render_all); the job runs after every other
    # job of the study, so its cores would otherwise idle. Capped at --cores.
    threads: 2
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/report.py --params {params.cfg:q} --runs {input.runs:q} "
        "--summary {input.summary:q} --dense {input.dense:q} --metrics {input.metrics:q} "
        "--curves {input.curves:q} --out-dir {params.figdir:q} --out-md {output.summary_md:q} "
        "--out-html {output.summary_html:q} --table-dir {params.tabledir:q} "
        "--threads {threads} > {log:q} 2>&1"


# The study summary page: headline numbers of every study with results, figures embedded.
# headline.rst is what workflow/report/workflow.rst shows as the headline answers.
rule summary:
    input:
        unpack(summary_inputs),
    output:
        page=report(
            f"{RES}/index.html",
            category="Study summary",
            caption="../report/summary.rst",
            labels={"type": "page", "shows": "headline numbers, figures, links to the tables"},
        ),
        rst=f"{RES}/headline.rst",
        json=f"{RES}/headline.json",
    params:
        cfg=json.dumps({"study": STUDY}, sort_keys=True),
        res=lambda wc, output: str(Path(output.page).parent),
    log:
        f"{LOGS}/summary.log",
    benchmark:
        f"{BENCH}/summary.tsv"
    threads: 1
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/report_summary.py --params {params.cfg:q} --results {params.res:q} "
        "--out-html {output.page:q} --out-rst {output.rst:q} --out-json {output.json:q} "
        "> {log:q} 2>&1"
