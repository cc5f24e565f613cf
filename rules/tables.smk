# Tables: built from the metric files only (never from MLflow).


rule table1:
    input:
        metrics=get_table_inputs(),
    output:
        csv="results/table1.csv",
        json="results/table1.json",
        md="results/table1.md",
        png="results/table1.png",
    params:
        title=table_title,
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
        " --png {output.png:q} --title {params.title:q} {input.metrics:q} 2> {log:q}"
