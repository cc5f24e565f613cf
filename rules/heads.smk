# Task heads on the frozen (or fine-tuned) backbone: train, then evaluate on the validation split.


rule train_head:
    input:
        unpack(head_inputs),
    output:
        head=paths.pattern(paths.HEAD),
        curve=paths.pattern(paths.CURVE),
        plot=report(
            paths.pattern(paths.PLOT),
            caption="report/curve.rst",
            category="Training curves",
            subcategory="{task}",
            labels={"backbone": "{backbone}", "mode": "{mode}", "seed": "{seed}"},
        ),
    params:
        spec=job_spec,
        launcher=job_launcher,
    log:
        paths.pattern(paths.TRAIN_LOG),
    benchmark:
        paths.pattern(paths.TRAIN_BENCHMARK)
    threads: task_threads
    resources:
        mem_mb=task_resource("mem_mb"),
        runtime=task_resource("runtime"),
        nodes=task_resource("nodes"),
        gpu=multi_node_resource("gpu"),
        gres=multi_node_resource("gres"),
        mpi=multi_node_resource("mpi"),
        tasks=multi_node_resource("tasks"),
        tasks_per_gpu=multi_node_resource("tasks_per_gpu"),
    conda:
        "../envs/frozenrep.yaml"
    shell:
        "{params.launcher} workflow_scripts/train.py --spec {params.spec:q} --checkpoint {input.checkpoint:q}"
        " --manifest {input.manifest:q} --out {output.head:q} --curve {output.curve:q} --plot {output.plot:q}"
        " --threads {threads} 2> {log:q}"


rule evaluate_head:
    input:
        unpack(head_inputs),
        head=paths.pattern(paths.HEAD),
    output:
        metrics=paths.pattern(paths.METRICS),
        pictures=report(
            directory(paths.pattern(paths.PREDICTIONS)),
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
        paths.pattern(paths.EVALUATE_LOG),
    benchmark:
        paths.pattern(paths.EVALUATE_BENCHMARK)
    threads: task_threads
    resources:
        mem_mb=task_resource("mem_mb"),
        runtime=task_resource("runtime"),
        nodes=task_resource("nodes"),
        gpu=multi_node_resource("gpu"),
        gres=multi_node_resource("gres"),
        mpi=multi_node_resource("mpi"),
        tasks=multi_node_resource("tasks"),
        tasks_per_gpu=multi_node_resource("tasks_per_gpu"),
    conda:
        "../envs/frozenrep.yaml"
    shell:
        "{params.launcher} workflow_scripts/evaluate.py --spec {params.spec:q} --checkpoint {input.checkpoint:q}"
        " --manifest {input.manifest:q} --head {input.head:q} --out {output.metrics:q} --threads {threads}"
        " --pictures {output.pictures:q} --num-pictures {params.pictures} {params.cache} 2> {log:q}"


# Table 2's head-capacity rungs: the same jobs with a rung's head (params: table2.rungs), under
# runs/heads/ and results/metrics/heads/ (frozenrep.paths). A rung whose head is the profile's own reuses table 1's
# jobs instead (rules/common.smk: rung_metrics_path).
use rule train_head as train_head_rung with:
    output:
        head=paths.pattern(paths.HEAD, rung=True),
        curve=paths.pattern(paths.CURVE, rung=True),
        plot=report(
            paths.pattern(paths.PLOT, rung=True),
            caption="report/curve.rst",
            category="Training curves",
            subcategory="{task} heads",
            labels={"rung": "{rung}", "backbone": "{backbone}", "mode": "{mode}", "seed": "{seed}"},
        ),
    params:
        spec=rung_job_spec,
        launcher=job_launcher,
    log:
        paths.pattern(paths.TRAIN_LOG, rung=True),
    benchmark:
        paths.pattern(paths.TRAIN_BENCHMARK, rung=True)


use rule evaluate_head as evaluate_head_rung with:
    input:
        unpack(head_inputs),
        head=paths.pattern(paths.HEAD, rung=True),
    output:
        metrics=paths.pattern(paths.METRICS, rung=True),
        pictures=report(
            directory(paths.pattern(paths.PREDICTIONS, rung=True)),
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
        paths.pattern(paths.EVALUATE_LOG, rung=True),
    benchmark:
        paths.pattern(paths.EVALUATE_BENCHMARK, rung=True)
