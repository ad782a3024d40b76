# Mean Jacobian norms of W* on the pruning data (Net Deviation, THEORY.md B): they depend
# on the unpruned network only, so one job per (arch, seed) serves every prune job.
rule jacobians:
    input:
        data=PREPARED,
        dense=rules.train_dense.output.ckpt,
    output:
        f"{RES}/netdev/{{arch}}/seed{{seed}}/jacobians.json",
    params:
        cfg=params_json("netdev"),
        device=DEVICE,
    log:
        f"{LOGS}/jacobians/{{arch}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/jacobians/{{arch}}_seed{{seed}}.tsv"
    threads: THREADS
    priority: GATE_PRIORITY
    resources:
        gpu=GPUS,
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/jacobians.py --params {params.cfg:q} --arch {wildcards.arch} "
        "--seed {wildcards.seed} --data {input.data:q} --dense {input.dense:q} "
        "--out {output:q} --device {params.device} --threads {threads} > {log:q} 2>&1"


# One job per (arch, seed, method, amount): all trials in one process (one trial for a
# deterministic method).
rule prune:
    input:
        data=PREPARED,
        dense=rules.train_dense.output.ckpt,
        jacobians=rules.jacobians.output,
    output:
        masks=f"{RES}/prune/{{arch}}/seed{{seed}}/{{method}}/s{{amount}}.pt",
        table=f"{RES}/prune/{{arch}}/seed{{seed}}/{{method}}/s{{amount}}.csv",
    params:
        # only what the job's method reads (plan.job_config), so e.g. a clustered option
        # reruns clustered pruning only
        cfg=lambda wc: json.dumps(job_config(config, wc.arch, "prune", wc.method), sort_keys=True),
        device=DEVICE,
    log:
        f"{LOGS}/prune/{{arch}}_seed{{seed}}_{{method}}_s{{amount}}.log",
    benchmark:
        f"{BENCH}/prune/{{arch}}_seed{{seed}}_{{method}}_s{{amount}}.tsv"
    threads: THREADS
    priority: priority_of
    resources:
        gpu=GPUS,
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/prune.py --params {params.cfg:q} --arch {wildcards.arch} "
        "--seed {wildcards.seed} --method {wildcards.method} --amount {wildcards.amount} "
        "--data {input.data:q} --dense {input.dense:q} --jacobians {input.jacobians:q} "
        "--out-masks {output.masks:q} --out-table {output.table:q} --device {params.device} "
        "--threads {threads} > {log:q} 2>&1"


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
    priority: priority_of
    resources:
        gpu=GPUS,
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/retrain.py --params {params.cfg:q} --arch {wildcards.arch} "
        "--seed {wildcards.seed} --method {wildcards.method} --amount {wildcards.amount} "
        "--data {input.data:q} --dense {input.dense:q} --dense-metrics {input.dense_metrics:q} "
        "--pruned {input.pruned:q} --out-table {output.table:q} --out-curves {output.curves:q} "
        "--device {params.device} --threads {threads} > {log:q} 2>&1"
