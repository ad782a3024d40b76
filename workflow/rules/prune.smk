# One job per (arch, seed, method, amount): all trials in one process.
rule prune:
    input:
        data=PREPARED,
        dense=rules.train_dense.output.ckpt,
    output:
        masks=f"{RES}/prune/{{arch}}/seed{{seed}}/{{method}}/s{{amount}}.pt",
        table=f"{RES}/prune/{{arch}}/seed{{seed}}/{{method}}/s{{amount}}.csv",
    params:
        cfg=params_json("prune"),
        device=DEVICE,
    log:
        f"{LOGS}/prune/{{arch}}_seed{{seed}}_{{method}}_s{{amount}}.log",
    benchmark:
        f"{BENCH}/prune/{{arch}}_seed{{seed}}_{{method}}_s{{amount}}.tsv"
    threads: THREADS
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/prune.py --params {params.cfg:q} --arch {wildcards.arch} "
        "--seed {wildcards.seed} --method {wildcards.method} --amount {wildcards.amount} "
        "--data {input.data:q} --dense {input.dense:q} --out-masks {output.masks:q} "
        "--out-table {output.table:q} --device {params.device} --threads {threads} > {log:q} 2>&1"


rule retrain:
    input:
        data=PREPARED,
        dense=rules.train_dense.output.ckpt,
        dense_metrics=rules.train_dense.output.metrics,
        pruned=rules.prune.output.masks,
    output:
        table=f"{RES}/retrain/{{arch}}/seed{{seed}}/{{method}}/s{{amount}}.csv",
        curves=f"{RES}/retrain/{{arch}}/seed{{seed}}/{{method}}/s{{amount}}_curves.csv",
    params:
        cfg=params_json("retrain"),
        device=DEVICE,
    log:
        f"{LOGS}/retrain/{{arch}}_seed{{seed}}_{{method}}_s{{amount}}.log",
    benchmark:
        f"{BENCH}/retrain/{{arch}}_seed{{seed}}_{{method}}_s{{amount}}.tsv"
    threads: THREADS
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/retrain.py --params {params.cfg:q} --arch {wildcards.arch} "
        "--seed {wildcards.seed} --method {wildcards.method} --amount {wildcards.amount} "
        "--data {input.data:q} --dense {input.dense:q} --dense-metrics {input.dense_metrics:q} "
        "--pruned {input.pruned:q} --out-table {output.table:q} --out-curves {output.curves:q} "
        "--device {params.device} --threads {threads} > {log:q} 2>&1"
