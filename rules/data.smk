# Datasets: generate (embedded default), download, or verify an existing copy; the output is a
# manifest of what was verified, which every head job depends on.


rule prepare_dataset:
    output:
        manifest=paths.MANIFEST,
    params:
        settings=dataset_config_json,
    log:
        "logs/data/{dataset}.log",
    threads: 1
    priority: BEFORE_HEADS
    resources:
        mem_mb=4000,
        runtime=600,
    conda:
        "../envs/frozenrep.yaml"
    shell:
        "python workflow_scripts/prepare_dataset.py --dataset {wildcards.dataset} --config {params.settings:q}"
        " --manifest {output.manifest:q} 2> {log:q}"
