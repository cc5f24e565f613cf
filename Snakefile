# frozenrep: frozen-backbone transfer studies as a workflow.
#   snakemake --cores all results/table1.csv                               (embedded default)
#   snakemake --configfile params/paper.yaml --profile profiles/slurm results/table1.csv
from snakemake.utils import min_version, validate

min_version("9.0")

# params/default.yaml is the default profile; a --configfile replaces it instead of merging into it.
if not workflow.overwrite_configfiles:

    configfile: "params/default.yaml"


SCHEMA_FILE = "params/schemas/config.schema.yaml"
validate(config, SCHEMA_FILE, set_default=True)


# snakemake --report results/report.html: the table, the curves and the prediction pictures.
report: "rules/report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    name=r"[A-Za-z0-9._-]+",
    backbone=r"[A-Za-z0-9._-]+",
    task="|".join(TASK_NAMES),
    dataset="|".join(TASK_NAMES),
    mode="frozen|finetune",
    seed=r"\d+",
    ext="pth|safetensors",


onstart:
    init_tracking()
    start_warm_server()


onsuccess:
    stop_warm_server()


onerror:
    stop_warm_server()


include: "rules/checkpoints.smk"
include: "rules/data.smk"
include: "rules/heads.smk"
include: "rules/tables.smk"


rule all:
    input:
        get_final_outputs(),
    default_target: True
