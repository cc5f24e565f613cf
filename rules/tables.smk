# Tables: built from the metric files only (never from MLflow); the cells are then logged on the
# table's MLflow parent run. Table 1 is the pretraining study; tables 2 (head capacity: one row per
# task, rung and mode), 3 (backbone size) and 4 (backbone families; both with the profile's
# published reference rows) are the same rule with their own inputs, outputs and options
# (rules/common.smk: table_options).


rule table1:
    input:
        metrics=get_table1_inputs,
    output:
        csv=report(paths.table_path("table1", "csv"), caption="report/table1.rst", category="Table 1", labels={"file": "table (csv)"}),
        json=paths.table_path("table1", "json"),
        md=paths.table_path("table1", "md"),
        png=report(paths.table_path("table1", "png"), caption="report/table1-plot.rst", category="Table 1", labels={"file": "chart"}),
    params:
        kind="table1",
        options=table_options("table1"),
        study=config["study"],
        tracking=TRACKING,
    log:
        "logs/tables/table1.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/frozenrep.yaml"
    shell:
        "python -m frozenrep.warm workflow_scripts/make_table.py --kind {params.kind} --out {output.csv:q} --json {output.json:q}"
        " --md {output.md:q} --png {output.png:q} {params.options} --study {params.study:q}"
        " --tracking {params.tracking:q} {input.metrics:q} 2> {log:q}"


use rule table1 as table2 with:
    input:
        metrics=get_table2_inputs,
    output:
        csv=report(paths.table_path("table2", "csv"), caption="report/table2.rst", category="Table 2", labels={"file": "table (csv)"}),
        json=paths.table_path("table2", "json"),
        md=paths.table_path("table2", "md"),
        png=report(paths.table_path("table2", "png"), caption="report/table2-plot.rst", category="Table 2", labels={"file": "chart"}),
    params:
        kind="table2",
        options=table_options("table2"),
        study=config["study"],
        tracking=TRACKING,
    log:
        "logs/tables/table2.log",


use rule table1 as table3 with:
    input:
        metrics=backbone_table_inputs("table3"),
    output:
        csv=report(paths.table_path("table3", "csv"), caption="report/table3.rst", category="Table 3", labels={"file": "table (csv)"}),
        json=paths.table_path("table3", "json"),
        md=paths.table_path("table3", "md"),
        png=report(paths.table_path("table3", "png"), caption="report/table3-plot.rst", category="Table 3", labels={"file": "chart"}),
    params:
        kind="table3",
        options=table_options("table3"),
        study=config["study"],
        tracking=TRACKING,
    log:
        "logs/tables/table3.log",


use rule table1 as table4 with:
    input:
        metrics=backbone_table_inputs("table4"),
    output:
        csv=report(paths.table_path("table4", "csv"), caption="report/table4.rst", category="Table 4", labels={"file": "table (csv)"}),
        json=paths.table_path("table4", "json"),
        md=paths.table_path("table4", "md"),
        png=report(paths.table_path("table4", "png"), caption="report/table4-plot.rst", category="Table 4", labels={"file": "chart"}),
    params:
        kind="table4",
        options=table_options("table4"),
        study=config["study"],
        tracking=TRACKING,
    log:
        "logs/tables/table4.log",
