rule train_dense:
    input:
        data=PREPARED,
    output:
        ckpt=f"{RES}/dense/{{arch}}/seed{{seed}}/dense.pt",
        metrics=f"{RES}/dense/{{arch}}/seed{{seed}}/metrics.json",
        curve=f"{RES}/dense/{{arch}}/seed{{seed}}/curve.csv",
    params:
        cfg=params_json("dense"),
        device=DEVICE,
    log:
        f"{LOGS}/train_dense/{{arch}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/train_dense/{{arch}}_seed{{seed}}.tsv"
    threads: THREADS
    priority: GATE_PRIORITY
    resources:
        gpu=GPUS,
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/train_dense.py --params {params.cfg:q} --arch {wildcards.arch} "
        "--seed {wildcards.seed} --data {input.data:q} --ckpt {output.ckpt:q} "
        "--metrics {output.metrics:q} --curve {output.curve:q} --device {params.device} "
        "--threads {threads} > {log:q} 2>&1"
