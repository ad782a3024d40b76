rule prepare_data:
    output:
        PREPARED,
    params:
        cfg=json.dumps({"data": {k: config["data"][k] for k in ("dataset", "n_val", "split_seed")}}),
        raw=f"{config['data_dir']}/raw",
        mirror=lambda wc: config["data"]["mirror"] or "",
    log:
        f"{LOGS}/prepare_data_{DATASET}.log",
    benchmark:
        f"{BENCH}/prepare_data_{DATASET}.tsv"
    threads: 1
    conda:
        "../envs/prunetime.yaml"
    shell:
        "python scripts/prepare_data.py --params {params.cfg:q} --raw-root {params.raw:q} "
        "--out {output:q} --mirror={params.mirror:q} > {log:q} 2>&1"
