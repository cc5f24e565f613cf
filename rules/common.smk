# Python helpers for the rules: targets, input functions, job specs. No logic beyond naming.
import json
import os
import shlex
import sys
from pathlib import Path

from frozenrep import paths
from frozenrep.checkpoints import load_registry
from frozenrep.config import (check_config, is_profile_head, job_processes_per_node, prefer_interpreter,
                              profile_schema)
from frozenrep.config import job_spec as make_job_spec  # the rule's name for it is job_spec
from frozenrep.locks import release_stale_snakemake_locks
from frozenrep.tasks import TASK_NAMES

# A Snakemake killed with SIGKILL leaves its locks behind; the next run removes them when no run of
# this working directory is alive (frozenrep.locks), so the same command picks up where it stopped.
if workflow.is_main_process:
    if stale := release_stale_snakemake_locks(Path(".snakemake")):
        print(f"warning: a Snakemake run of this directory ended without releasing its locks (killed?); "
              f"removed {', '.join(map(str, stale))}", file=sys.stderr)

# Jobs' `python` is the interpreter running Snakemake (the project's virtual environment), even
# when snakemake was started as .venv/bin/snakemake without activating the environment.
prefer_interpreter(sys.executable)
REGISTRY = load_registry(config["registry"])
SCHEMA = profile_schema(Path(workflow.basedir) / SCHEMA_FILE)
check_config(config, REGISTRY, SCHEMA)  # the schema checks each table-2 rung's head
SEEDS = list(range(config["seeds"]))
TRACKING = json.dumps(config["tracking"], sort_keys=True)  # what --tracking gets


def init_tracking():
    """Create the tracking store, the study's experiment and table1's parent run once, before jobs race to."""
    from frozenrep.tracking import ensure_experiment, parent_run, resolve_uri

    uri = resolve_uri(config["tracking"]["uri"])
    try:
        ensure_experiment(uri, config["study"], config["tracking"]["artifacts"])
        parent_run(uri, config["study"], "table1")
    except Exception as err:  # tracking never stops the workflow: the jobs go on untracked and say so
        print(f"warning: MLflow tracking at {uri} failed ({type(err).__name__}: {err}); the jobs run untracked",
              file=sys.stderr)


# Warm start (`warm_start`, frozenrep.warm): head and table jobs start as `python -m frozenrep.warm
# SCRIPT ...`, which forks them from this run's server when there is one (its socket reaches them in
# FROZENREP_WARM) and otherwise runs `python SCRIPT ...`. The command is the same either way, so
# turning warm_start on or off reruns no job.
WARM_SERVER = {}


def start_warm_server():
    """The warm-start server of this run, when the profile asks for it and jobs run on this machine."""
    if not config.get("warm_start") or not workflow.local_exec or workflow.touch:
        return
    import subprocess
    import tempfile

    from frozenrep.warm import ENV

    folder = Path(tempfile.mkdtemp(prefix="frozenrep-warm-"))  # private (0700), and short: a socket path is
    socket_path = folder / "socket"                               # at most 107 bytes
    Path("logs").mkdir(exist_ok=True)
    with open("logs/warm-start.log", "a") as log:
        process = subprocess.Popen([sys.executable, "-m", "frozenrep.warm", "--serve", str(socket_path),
                                    "--tasks", *config["tasks"]], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    WARM_SERVER.update(process=process, folder=folder)
    os.environ[ENV] = str(socket_path)


def stop_warm_server():
    """Stop this run's warm-start server (it ends once its last job has), and forget its socket."""
    import shutil
    import subprocess

    from frozenrep.warm import ENV

    process = WARM_SERVER.pop("process", None)
    if process is None:
        return
    os.environ.pop(ENV, None)
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        print(f"warning: the warm-start server (pid {process.pid}) still runs jobs; left to end on its own",
              file=sys.stderr)
    shutil.rmtree(WARM_SERVER.pop("folder"), ignore_errors=True)


def get_final_outputs():
    """What a plain `snakemake` builds: the study's table."""
    return [paths.table_path("table1")]


def profile_backbones():
    """Every backbone of the profile's tables, each once: table 1's, then table 2's, 3's and 4's."""
    names = list(config["backbones"]) + [config.get("table2", {}).get("backbone")]
    names += table_backbones("table3") + table_backbones("table4")
    return [name for name in dict.fromkeys(names) if name]


def checkpoint_path(name):
    """Verified local copy of a registry entry's weights."""
    return str(REGISTRY[name].local_path())


def local_checkpoint_source(wildcards):
    """For file: sources created by a rule, the file to fetch from (so the rule runs first)."""
    entry = REGISTRY[wildcards.name]
    if entry.create is not None:
        return {"source": entry.source[len("file:") :]}
    return {}


def registry_entry_json(wildcards):
    """One registry entry as JSON: a change to it reruns only that checkpoint's jobs."""
    return json.dumps(REGISTRY[wildcards.name].__dict__, sort_keys=True)


def creatable_entry(wildcards):
    """The registry entry of a locally created backbone, by the file name its source names."""
    for entry in REGISTRY.values():
        if entry.create is not None and entry.source == f"file:checkpoints/local/{wildcards.name}.safetensors":
            return entry
    raise ValueError(
        f"no registry entry creates checkpoints/local/{wildcards.name}.safetensors "
        f"(entries with `create:` in {config['registry']})"
    )


def creatable_entry_json(wildcards):
    return json.dumps(creatable_entry(wildcards).__dict__, sort_keys=True)


# Scheduling priorities (Snakemake starts the ready jobs of highest priority first). Datasets and
# backbones come before head jobs, which wait for them; among jobs of one kind the longest come
# first, by their training steps, so that the shortest fill the cores at the end of the DAG instead
# of one long job running alone.
BEFORE_HEADS = 1_000_000  # above any head job's steps


def backbone_priority(wildcards):
    """A locally created backbone's priority: before every head job, the longest pretraining first."""
    return BEFORE_HEADS + (creatable_entry(wildcards).create.get("train") or {}).get("steps", 0)


def head_priority(wildcards):
    """A head job's priority: its training steps."""
    spec = make_job_spec(config, REGISTRY, wildcards.task, wildcards.backbone, wildcards.mode, wildcards.seed)
    return spec.task_config["train"]["steps"]


def dataset_manifest(task):
    return paths.manifest_path(task)


def dataset_config_json(wildcards):
    """One dataset's settings as JSON: a change to them reruns only that dataset's jobs."""
    return json.dumps(config["datasets"][wildcards.dataset], sort_keys=True)


def head_inputs(wildcards):
    return {
        "manifest": dataset_manifest(wildcards.task),
        "checkpoint": checkpoint_path(wildcards.backbone),
    }


def job_spec(wildcards):
    """Everything a head job (training, then evaluation) needs, as JSON (a change reruns exactly the affected jobs).
    A backbone that table 1 does not list has its runs under the MLflow parent run of the first
    backbone table (3, then 4) that does."""
    listing = [table for table in ("table3", "table4") if wildcards.backbone in table_backbones(table)]
    table = "table1" if wildcards.backbone in config["backbones"] or not listing else listing[0]
    spec = make_job_spec(config, REGISTRY, wildcards.task, wildcards.backbone, wildcards.mode, wildcards.seed,
                         table=table)
    return spec.to_json()


def rung_job_spec(wildcards):
    """The job spec of a table-2 rung: the profile's task settings with the rung's head."""
    spec = make_job_spec(config, REGISTRY, wildcards.task, wildcards.backbone, wildcards.mode, wildcards.seed,
                         rung=wildcards.rung, table="table2")
    return spec.to_json()


def feature_cache_option(wildcards):
    """`--feature-cache DIR` for the evaluation of a frozen backbone's head when `feature_cache` is set."""
    root = config.get("feature_cache")
    return f"--feature-cache {shlex.quote(root)}" if root and wildcards.mode == "frozen" else ""


def task_resource(key):
    """Input function for a task's `resources` entry (threads, gpus, mem_mb, runtime, nodes)."""

    def get(wildcards):
        return config[wildcards.task]["resources"][key]

    return get


def multi_node_resource(key):
    """Input function for what snakemake-executor-plugin-slurm needs of a job over `resources.nodes` > 1
    (None, which leaves a resource unset, for one node):
    - `mpi`: the plugin runs the rule's command in the batch script itself (the command's own srun
      starts the processes), not inside an `srun -n1` of its own;
    - `tasks`: one task per node, the torchrun of that node;
    - `gres`: the GPUs per node (`--gres=gpu:N`; the single-node `gpu` resource is a job total),
      and `tasks_per_gpu: 0`, which keeps the plugin from deriving `--ntasks-per-gpu` from `tasks`;
    - `gpu`: the single-node job's GPUs (`--gpus=N`)."""

    def get(wildcards):
        resources = config[wildcards.task]["resources"]
        nodes, gpus = resources["nodes"], resources["gpus"]
        if key == "gpu":
            return gpus if nodes == 1 else None
        if nodes == 1 or (key in ("gres", "tasks_per_gpu") and not gpus):
            return None
        return {"mpi": "srun", "tasks": nodes, "gres": f"gpu:{gpus}", "tasks_per_gpu": 0}[key]

    return get


# The rendezvous port on a multi-node job's first node: one per job, so that jobs sharing a node do not meet.
RENDEZVOUS_PORT = "$((29500 + SLURM_JOB_ID % 20000))"


def job_launcher(wildcards):
    """What starts a head job's script, by `exec`, so that a stop signal (SIGTERM at
    preemption or at the time limit) reaches the job itself and not a shell in between: `python`;
    torchrun with one process per GPU (or per `processes`) on one node; or, over `resources.nodes` > 1,
    srun starting one torchrun per node of the SLURM allocation, which meet at a c10d rendezvous on
    its first node. Data-parallel training, and evaluation that splits the validation set over the
    ranks and pools their predictions."""
    resources = config[wildcards.task]["resources"]
    processes, nodes = job_processes_per_node(resources), resources["nodes"]
    if nodes > 1:
        need = (f"{wildcards.task}.resources.nodes is {nodes}: the job runs in a SLURM allocation of that many "
                "nodes (snakemake --profile profiles/slurm); set nodes to 1 to run it here")
        gpus = f" --gpus-per-node={resources['gpus']}" if resources["gpus"] else ""
        # The plugin passes the job id alone of the allocation's variables (SLURM_JOB_NODELIST is not among them).
        first = '$(scontrol show hostnames "$(squeue --noheader --jobs "$SLURM_JOB_ID" --format %N)" | head -n 1)'
        return (f': "${{SLURM_JOB_ID:?{need}}}" && exec srun --nodes={nodes} --ntasks-per-node=1 '
                f"--cpus-per-task={resources['threads']}{gpus} --kill-on-bad-exit=1 "
                f"torchrun --nnodes={nodes} --nproc_per_node={processes} --rdzv_backend=c10d "
                f'--rdzv_id="$SLURM_JOB_ID" --rdzv_endpoint="{first}:{RENDEZVOUS_PORT}"')
    if processes == 1:
        return "exec python -m frozenrep.warm"
    return f"exec torchrun --standalone --nproc_per_node={processes}"


def task_threads(wildcards):
    return config[wildcards.task]["resources"]["threads"]


def metrics_path(task, backbone, mode, seed):
    return paths.job_path(paths.METRICS, task, backbone, mode, seed)


def table_title(table="table1"):
    """Caption of a table's .md and .png: the study, the table's subject and its seed count."""
    seeds = config["seeds"]
    subject = {"table1": "", "table2": " head capacity,", "table3": " backbone size,",
               "table4": " backbone families,"}[table]
    return (f"{config['study']}:{subject} {seeds} seed{'s' if seeds > 1 else ''} per cell"
            + (", mean ± std" if seeds > 1 else ""))


def get_table1_inputs(wildcards):
    """Every metric file of the study: task x backbone x mode x seed."""
    return [
        metrics_path(task, backbone, mode, seed)
        for task in config["tasks"]
        for backbone in config["backbones"]
        for mode in config["modes"]
        for seed in SEEDS
    ]


def table_options(table):
    """Input function for make_table.py's options of ``table``: its title, and table 2's rung
    labels or tables 3's and 4's published rows (as JSON)."""

    def get(wildcards):
        options = ["--title", table_title(table)]
        if table == "table2":
            options += ["--rungs", json.dumps(table2_rung_labels(), sort_keys=True)]
        if table in ("table3", "table4"):
            options += ["--published", json.dumps(config.get(table, {}).get("published", []), sort_keys=True)]
        return " ".join(shlex.quote(option) for option in options)

    return get


def missing_table(table):
    raise ValueError(f"the profile has no `{table}` section, so {paths.table_path(table)} cannot be built; "
                     f"add one (params/default.yaml has an example).")


def rung_metrics_path(task, rung, backbone, mode, seed):
    """A table-2 rung's metric file; a rung with the profile's own head is table 1's job."""
    if is_profile_head(config, task, rung):
        return metrics_path(task, backbone, mode, seed)
    return paths.job_path(paths.METRICS, task, backbone, mode, seed, rung)


def table2_rung_labels():
    """{metric file: rung name} of every job in table 2."""
    t2 = config["table2"]
    return {
        rung_metrics_path(task, rung["name"], t2["backbone"], mode, seed): rung["name"]
        for task, rungs in t2["rungs"].items()
        for rung in rungs
        for mode in t2["modes"]
        for seed in SEEDS
    }


def get_table2_inputs(wildcards):
    """Every metric file of table 2: task x rung x mode x seed on table2.backbone."""
    if "table2" not in config:
        missing_table("table2")
    return list(table2_rung_labels())


def table_backbones(table):
    """The backbones a backbone table (table3, table4) lists; none without that section."""
    return list(config.get(table, {}).get("backbones", []))


def backbone_table_inputs(table):
    """Input function: every metric file of a backbone table, task x backbone x mode x seed."""

    def get(wildcards):
        if table not in config:
            missing_table(table)
        return [
            metrics_path(task, backbone, mode, seed)
            for task in config["tasks"]
            for backbone in config[table]["backbones"]
            for mode in config[table]["modes"]
            for seed in SEEDS
        ]

    return get
