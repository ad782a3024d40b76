rule bounds:
    input:
        prune=job_files(rules.prune.output.table),
        retrain=job_files(rules.retrain.output.table),
        dense=expand(rules.train_dense.output.metrics, arch=ARCHS, seed=SEEDS),
    output:
        runs=f"{RES}/tables/runs.csv",
        summary=f"{RES}/tables/summary.csv",
        dense=f"{RES}/tables/dense.csv",
        metrics=f"{RES}/metrics.json",
        netdev=f"{RES}/tables/netdev.csv",
    params:
        cfg=json.dumps({"bounds": config["bounds"]}, sort_keys=True),
    log:
        f"{LOGS}/bounds.log",
    benchmark:
        f"{BENCH}/bounds.tsv"
    threads: 1
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/bounds.py --params {params.cfg:q} --prune {input.prune:q} "
        "--retrain {input.retrain:q} --dense {input.dense:q} --out-runs {output.runs:q} "
        "--out-summary {output.summary:q} --out-dense {output.dense:q} "
        "--out-metrics {output.metrics:q} --out-netdev {output.netdev:q} > {log:q} 2>&1"
