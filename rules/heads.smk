# Task heads on the frozen (or fine-tuned) backbone: train, then evaluate on the validation split.


rule train_head:
    input:
        unpack(head_inputs),
    output:
        head="runs/{task}/{backbone}/{mode}/seed{seed}/head.safetensors",
        curve="results/curves/{task}/{backbone}/{mode}/seed{seed}.csv",
    params:
        spec=job_spec,
        launcher=train_launcher,
    log:
        "logs/train/{task}/{backbone}/{mode}/seed{seed}.log",
    benchmark:
        "logs/benchmark/train/{task}/{backbone}/{mode}/seed{seed}.tsv"
    threads: task_threads
    resources:
        gpu=task_resource("gpus"),
        mem_mb=task_resource("mem_mb"),
        runtime=task_resource("runtime"),
    conda:
        "../envs/frozenrep.yaml"
    shell:
        "{params.launcher} workflow_scripts/train.py --spec {params.spec:q} --checkpoint {input.checkpoint:q}"
        " --manifest {input.manifest:q} --out {output.head:q} --curve {output.curve:q} --threads {threads}"
        " 2> {log:q}"


rule evaluate_head:
    input:
        unpack(head_inputs),
        head="runs/{task}/{backbone}/{mode}/seed{seed}/head.safetensors",
    output:
        metrics="results/metrics/{task}/{backbone}/{mode}/seed{seed}.json",
    params:
        spec=job_spec,
        cache=feature_cache_option,
    log:
        "logs/evaluate/{task}/{backbone}/{mode}/seed{seed}.log",
    benchmark:
        "logs/benchmark/evaluate/{task}/{backbone}/{mode}/seed{seed}.tsv"
    threads: task_threads
    resources:
        gpu=eval_gpus,
        mem_mb=task_resource("mem_mb"),
        runtime=task_resource("runtime"),
    conda:
        "../envs/frozenrep.yaml"
    shell:
        "python workflow_scripts/evaluate.py --spec {params.spec:q} --checkpoint {input.checkpoint:q}"
        " --manifest {input.manifest:q} --head {input.head:q} --out {output.metrics:q} --threads {threads}"
        " {params.cache} 2> {log:q}"
