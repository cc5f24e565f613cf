# Datasets: generate (embedded default), download, or verify an existing copy; the output is a
# manifest of what was verified, which every training and evaluation job depends on.


rule prepare_coco:
    output:
        manifest="data/coco.manifest.json",
    params:
        dataset=dataset_config_json("coco"),
    log:
        "logs/data/coco.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=600,
    conda:
        "../envs/frozenrep.yaml"
    shell:
        "python workflow_scripts/prepare_coco.py --config {params.dataset:q} --manifest {output.manifest:q} 2> {log:q}"
