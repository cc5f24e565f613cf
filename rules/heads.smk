# Task heads on the frozen (or fine-tuned) backbone: train, then evaluate on the validation split.


rule train_head:
    input:
        unpack(head_inputs),
    output:
        head="runs/{task}/{backbone}/{mode}/seed{seed}/head.safetensors",
        curve="results/curves/{task}/{backbone}/{mode}/seed{seed}.csv",
        plot=report(
            "results/plots/{task}/{backbone}/{mode}/seed{seed}.png",
            caption="report/curve.rst",
            category="Training curves",
            subcategory="{task}",
            labels={"backbone": "{backbone}", "mode": "{mode}", "seed": "{seed}"},
        ),
    params:
        spec=job_spec,
        launcher=job_launcher,
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
        " --manifest {input.manifest:q} --out {output.head:q} --curve {output.curve:q} --plot {output.plot:q}"
        " --threads {threads} 2> {log:q}"


rule evaluate_head:
    input:
        unpack(head_inputs),
        head="runs/{task}/{backbone}/{mode}/seed{seed}/head.safetensors",
    output:
        metrics="results/metrics/{task}/{backbone}/{mode}/seed{seed}.json",
        pictures=report(
            directory("results/predictions/{task}/{backbone}/{mode}/seed{seed}"),
            patterns=["{sample}.png"],
            caption="report/predictions.rst",
            category="Predictions",
            subcategory="{task}",
            labels={"backbone": "{backbone}", "mode": "{mode}", "seed": "{seed}", "sample": "{sample}"},
        ),
    params:
        spec=job_spec,
        cache=feature_cache_option,
        pictures=config["pictures"],
        launcher=job_launcher,
    log:
        "logs/evaluate/{task}/{backbone}/{mode}/seed{seed}.log",
    benchmark:
        "logs/benchmark/evaluate/{task}/{backbone}/{mode}/seed{seed}.tsv"
    threads: task_threads
    resources:
        gpu=task_resource("gpus"),
        mem_mb=task_resource("mem_mb"),
        runtime=task_resource("runtime"),
    conda:
        "../envs/frozenrep.yaml"
    shell:
        "{params.launcher} workflow_scripts/evaluate.py --spec {params.spec:q} --checkpoint {input.checkpoint:q}"
        " --manifest {input.manifest:q} --head {input.head:q} --out {output.metrics:q} --threads {threads}"
        " --pictures {output.pictures:q} --num-pictures {params.pictures} {params.cache} 2> {log:q}"


# Table 2's head-capacity rungs: the same jobs with a rung's head (params: table2.rungs), under
# runs/heads/ and results/metrics/heads/. A rung whose head is the profile's own reuses table 1's
# jobs instead (rules/common.smk: rung_metrics_path).
use rule train_head as train_head_rung with:
    output:
        head="runs/heads/{task}/{rung}/{backbone}/{mode}/seed{seed}/head.safetensors",
        curve="results/curves/heads/{task}/{rung}/{backbone}/{mode}/seed{seed}.csv",
        plot=report(
            "results/plots/heads/{task}/{rung}/{backbone}/{mode}/seed{seed}.png",
            caption="report/curve.rst",
            category="Training curves",
            subcategory="{task} heads",
            labels={"rung": "{rung}", "backbone": "{backbone}", "mode": "{mode}", "seed": "{seed}"},
        ),
    params:
        spec=rung_job_spec,
        launcher=job_launcher,
    log:
        "logs/train/heads/{task}/{rung}/{backbone}/{mode}/seed{seed}.log",
    benchmark:
        "logs/benchmark/train/heads/{task}/{rung}/{backbone}/{mode}/seed{seed}.tsv"


use rule evaluate_head as evaluate_head_rung with:
    input:
        unpack(head_inputs),
        head="runs/heads/{task}/{rung}/{backbone}/{mode}/seed{seed}/head.safetensors",
    output:
        metrics="results/metrics/heads/{task}/{rung}/{backbone}/{mode}/seed{seed}.json",
        pictures=report(
            directory("results/predictions/heads/{task}/{rung}/{backbone}/{mode}/seed{seed}"),
            patterns=["{sample}.png"],
            caption="report/predictions.rst",
            category="Predictions",
            subcategory="{task} heads",
            labels={"rung": "{rung}", "backbone": "{backbone}", "mode": "{mode}", "seed": "{seed}", "sample": "{sample}"},
        ),
    params:
        spec=rung_job_spec,
        cache=feature_cache_option,
        pictures=config["pictures"],
        launcher=job_launcher,
    log:
        "logs/evaluate/heads/{task}/{rung}/{backbone}/{mode}/seed{seed}.log",
    benchmark:
        "logs/benchmark/evaluate/heads/{task}/{rung}/{backbone}/{mode}/seed{seed}.tsv"
