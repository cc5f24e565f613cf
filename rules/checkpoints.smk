# Backbone checkpoints: create (random init or pretrain) the embedded default's tiny backbones,
# fetch and verify every one.


rule all_checkpoints:
    """Every checkpoint the profile's tables use, verified (the DVC checkpoints stage runs this)."""
    input:
        [checkpoint_path(name) for name in profile_backbones()],
    localrule: True


rule create_local_backbone:
    output:
        ckpt="checkpoints/local/{name}.safetensors",
        sha="checkpoints/local/{name}.safetensors.sha256",
    params:
        entry=creatable_entry_json,
        tracking=TRACKING,
        study=config["study"],
    log:
        "logs/checkpoints/create_{name}.log",
    benchmark:
        "logs/benchmark/checkpoints/create_{name}.tsv"
    threads: 1
    priority: backbone_priority
    resources:
        mem_mb=3000,
        runtime=60,
    conda:
        "../envs/frozenrep.yaml"
    shell:
        "python workflow_scripts/create_backbone.py --entry {params.entry:q} --out {output.ckpt:q}"
        " --tracking {params.tracking:q} --study {params.study:q} --threads {threads} 2> {log:q}"


rule fetch_checkpoint:
    input:
        unpack(local_checkpoint_source),
    output:
        ckpt="checkpoints/{name}.{ext}",
        sha="checkpoints/{name}.{ext}.sha256",
    params:
        entry=registry_entry_json,
    log:
        "logs/checkpoints/fetch_{name}.{ext}.log",
    threads: 1
    priority: BEFORE_HEADS
    resources:
        mem_mb=2000,
        runtime=120,
    conda:
        "../envs/frozenrep.yaml"
    shell:
        "python workflow_scripts/fetch_checkpoint.py --entry {params.entry:q} --out {output.ckpt:q} 2> {log:q}"
