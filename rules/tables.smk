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
        title=table_title("table1"),
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


# Table 2: head capacity under a frozen (and a fine-tuned) backbone, one row per task, rung and mode.
rule table2:
    input:
        metrics=get_table2_inputs,
    output:
        csv=report("results/table2.csv", caption="report/table2.rst", category="Table 2", labels={"file": "table (csv)"}),
        json="results/table2.json",
        md="results/table2.md",
        png=report("results/table2.png", caption="report/table2-plot.rst", category="Table 2", labels={"file": "chart"}),
    params:
        title=table_title("table2"),
        rungs=lambda wildcards: json.dumps(table2_rung_labels(), sort_keys=True),
        study=config["study"],
        tracking=json.dumps(config["tracking"], sort_keys=True),
    log:
        "logs/tables/table2.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/frozenrep.yaml"
    shell:
        "python workflow_scripts/make_table.py --kind table2 --out {output.csv:q} --json {output.json:q}"
        " --md {output.md:q} --png {output.png:q} --title {params.title:q} --rungs {params.rungs:q}"
        " --study {params.study:q} --tracking {params.tracking:q} {input.metrics:q} 2> {log:q}"


# Table 3: backbone size, one row per backbone and mode, plus the profile's published reference rows.
rule table3:
    input:
        metrics=get_table3_inputs,
    output:
        csv=report("results/table3.csv", caption="report/table3.rst", category="Table 3", labels={"file": "table (csv)"}),
        json="results/table3.json",
        md="results/table3.md",
        png=report("results/table3.png", caption="report/table3-plot.rst", category="Table 3", labels={"file": "chart"}),
    params:
        title=table_title("table3"),
        published=json.dumps(config.get("table3", {}).get("published", []), sort_keys=True),
        study=config["study"],
        tracking=json.dumps(config["tracking"], sort_keys=True),
    log:
        "logs/tables/table3.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/frozenrep.yaml"
    shell:
        "python workflow_scripts/make_table.py --kind table3 --out {output.csv:q} --json {output.json:q}"
        " --md {output.md:q} --png {output.png:q} --title {params.title:q} --published {params.published:q}"
        " --study {params.study:q} --tracking {params.tracking:q} {input.metrics:q} 2> {log:q}"
