# Tables: built from the metric files only (never from MLflow); the cells are then logged on the
# table's MLflow parent run.


rule table1:
    input:
        metrics=get_table_inputs(),
    output:
        csv=report("results/table1.csv", caption="report/table1.rst", category="Table 1", labels={"file": "table (csv)"}),
        json="results/table1.json",
        md="results/table1.md",
        png=report("results/table1.png", caption="report/table1-plot.rst", category="Table 1", labels={"file": "chart"}),
    params:
        title=table_title,
        study=config["study"],
        tracking=json.dumps(config["tracking"], sort_keys=True),
    log:
        "logs/tables/table1.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/frozenrep.yaml"
    shell:
        "python workflow_scripts/make_table.py --out {output.csv:q} --json {output.json:q} --md {output.md:q}"
        " --png {output.png:q} --title {params.title:q} --study {params.study:q} --tracking {params.tracking:q}"
        " {input.metrics:q} 2> {log:q}"
