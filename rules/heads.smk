# Task heads on the frozen (or fine-tuned) backbone: one job trains the head, then evaluates it on
# the validation split in the same process (one start-up, one model, one MLflow run).


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
        paths.pattern(paths.LOG),
    benchmark:
        paths.pattern(paths.BENCHMARK)
    threads: task_threads
    priority: head_priority
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
        " --metrics {output.metrics:q} --pictures {output.pictures:q} --num-pictures {params.pictures}"
        " {params.cache} --threads {threads} 2> {log:q}"


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
        paths.pattern(paths.LOG, rung=True),
    benchmark:
        paths.pattern(paths.BENCHMARK, rung=True)
