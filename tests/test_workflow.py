"""The workflow end to end: lint, the paper DAG without network, a CI-sized run tracked in MLflow."""

import json
import re

import pandas as pd
import pytest
import torch
import yaml
from pathlib import Path
from safetensors import safe_open

from workspace import REPO, SNAKEMAKE, copy_workspace, make_workspace, snakemake, tool_env

pytestmark = pytest.mark.workflow


def job_counts(output: str) -> dict[str, int]:
    table = output[output.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def train_steps(output: str, task: str) -> set[tuple[str, str]]:
    """(mode, training steps) in the job specs of the task's jobs that a dry run prints (-p)."""
    return set(re.findall(rf'"mode": "(\w+)",[^\n]*?"task": "{task}", "task_config": \{{[^\n]*?"train": \{{[^}}]*"steps": (\d+)',
                          output))


def test_lint_is_clean():
    result = snakemake(REPO, "--lint")
    assert result.returncode == 0 and "Congratulations" in result.stdout + result.stderr, result.stdout


def test_paper_profile_dry_run_lists_the_whole_dag_offline(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    result = snakemake(ws, "-n", "-p", "--configfile=params/paper.yaml", "results/table1.csv", "results/table4.csv")
    assert result.returncode == 0, result.stdout + result.stderr
    # table 1: 3 tasks x 6 official backbones x (frozen, finetune) x 1 seed; table 4: 6 families, one of
    # them (swin-b-in22k) table 1's, the others hub copies (timm:) and the authors' releases
    assert job_counts(result.stdout) == {"prepare_dataset": 3, "fetch_checkpoint": 6 + 5, "train_head": 36 + 30,
                                         "table1": 1, "table4": 1}
    for name in ("convnext-b-in22k", "vit-b16-in21k", "vit-b16-mae-official", "dinov2-b14-official", "clip-b16-official"):
        assert f"results/metrics/coco/{name}/finetune/seed0.json" in result.stdout, name
        assert f"runs/k400/{name}/frozen/seed0/head.safetensors" in result.stdout, name
    assert "--kind table4" in result.stdout and "backbone families" in result.stdout
    coco_jobs = [line for line in result.stdout.splitlines() if "workflow_scripts/train.py" in line and '"task": "coco"' in line]
    assert len(coco_jobs) == 12 + 10 and all('"engine": "detectron2"' in line for line in coco_jobs)  # on Detectron2
    assert '"table": "table4"' in result.stdout  # table-4-only backbones' runs go under table 4's parent run
    # every head job (training, then evaluation) runs one process per GPU of its node's 8
    assert result.stdout.count("torchrun --standalone --nproc_per_node=8 workflow_scripts/train.py") == 66
    assert "checkpoints/swin-b-simmim.pth" in result.stdout and "checkpoints/swinv2-b-simmim.pth" in result.stdout
    assert "checkpoints/swinv2-l-in22k.pth" in result.stdout
    assert "results/metrics/ade20k/swin-b-in22k/frozen/seed0.json" in result.stdout
    assert "data/ade20k.manifest.json" in result.stdout and "data/k400.manifest.json" in result.stdout
    assert "runs/k400/swinv2-l-in22k/frozen/seed0/head.safetensors" in result.stdout
    assert not (ws / "data").exists() and not (ws / "checkpoints").exists()


def test_paper_profile_dry_run_of_tables_2_and_3(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    (ws / "two-nodes.yaml").write_text("coco:\n  resources: {nodes: 2}\n")  # COCO's jobs over two nodes of 8 GPUs
    result = snakemake(ws, "-n", "-p", "results/table2.csv", "results/table3.csv",
                       "--configfile", "params/paper.yaml", "two-nodes.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    # table 2: SwinV2-L x (frozen, finetune) x rungs (COCO 6, ADE20K 3, K400 4), one per task being the
    # profile's head (table 1's jobs: train_head); table 3: 3 backbones x 3 tasks, frozen, SwinV2-L's shared
    assert job_counts(result.stdout) == {"prepare_dataset": 3, "fetch_checkpoint": 3, "train_head": 6 + 6,
                                         "train_head_rung": 20, "table2": 1, "table3": 1}
    assert "runs/heads/coco/4conv1fc-fpn3/swinv2-l-in22k/frozen/seed0/head.safetensors" in result.stdout
    assert "results/metrics/ade20k/swinv2-l-in22k/finetune/seed0.json" in result.stdout  # the pd1-td4 rung
    assert "runs/heads/ade20k/pd1-td4" not in result.stdout
    assert "results/metrics/k400/swin-b-in22k/frozen/seed0.json" in result.stdout
    # COCO: 2 + 10 (table 2: the profile's head and five rungs, frozen and fine-tuned) + 2 (table 3)
    # training jobs, srun starting one torchrun per node; the others on one node
    two_nodes = ("srun --nodes=2 --ntasks-per-node=1 --cpus-per-task=8 --gpus-per-node=8 --kill-on-bad-exit=1 "
                 "torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d")
    assert result.stdout.count(f"{two_nodes} ") == 14
    assert re.search(rf"{two_nodes} [^\n]*workflow_scripts/train.py[^\n]*runs/heads/coco/4conv1fc-fpn3/", result.stdout)
    assert result.stdout.count("torchrun --standalone --nproc_per_node=8 workflow_scripts/train.py") == 32 - 14
    # every COCO job on Detectron2; the three Cascade Mask R-CNN rungs, frozen and fine-tuned
    coco_jobs = [line for line in result.stdout.splitlines() if "workflow_scripts/train.py" in line and '"task": "coco"' in line]
    assert len(coco_jobs) == 14 and all('"engine": "detectron2"' in line for line in coco_jobs)
    assert sum('"roi_heads": "cascade"' in line for line in coco_jobs) == 6
    assert "runs/heads/coco/cascade-4conv1fc-fpn3/swinv2-l-in22k/finetune/seed0/head.safetensors" in result.stdout
    assert "swinv2-g-lin22" in result.stdout  # the published reference row goes to make_table.py
    assert not (ws / "data").exists() and not (ws / "checkpoints").exists()


def test_default_profile_dry_run(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    result = snakemake(ws, "-n", "results/table1.csv")
    assert result.returncode == 0, result.stdout + result.stderr
    # 4 pretrainings (none = random init) x 3 tasks x (frozen, finetune) x 1 seed
    assert job_counts(result.stdout) == {"create_local_backbone": 4, "fetch_checkpoint": 4, "prepare_dataset": 3,
                                         "train_head": 24, "table1": 1}
    three_seeds = snakemake(ws, "-n", "results/table1.csv", "--config", "seeds=3")
    assert job_counts(three_seeds.stdout)["train_head"] == 72
    # the study layer: 3 seeds, the video heads train 1000 steps instead of 200, the fine-tuned COCO jobs 1200
    study = snakemake(ws, "-n", "-p", "results/table1.csv", "--configfile", "params/default.yaml", "params/study.yaml")
    assert job_counts(study.stdout)["train_head"] == 72
    default = snakemake(ws, "-n", "-p").stdout
    assert train_steps(study.stdout, "k400") == {("frozen", "1000"), ("finetune", "1000")}
    assert train_steps(default, "k400") == {("frozen", "200"), ("finetune", "200")}
    assert train_steps(study.stdout, "coco") == {("frozen", "300"), ("finetune", "1200")}
    assert train_steps(default, "coco") == {("frozen", "300"), ("finetune", "300")}
    # tables 2 and 3: supervised x (frozen, finetune) x rungs (3 + 3 + 5, one per task table 1's), and
    # 3 widths x 3 tasks frozen (the middle one shared): 3 pretrainings
    tables = snakemake(ws, "-n", "results/table2.csv", "results/table3.csv")
    assert job_counts(tables.stdout) == {"create_local_backbone": 3, "fetch_checkpoint": 3, "prepare_dataset": 3,
                                         "train_head": 6 + 6, "train_head_rung": 16, "table2": 1,
                                         "table3": 1}
    # table 4: 6 backbones (4 pretrained only for it) x 3 tasks x (frozen, finetune); tiny-swin-supervised's
    # and tiny-swin-simmim's are table 1's
    families = snakemake(ws, "-n", "results/table4.csv")
    assert job_counts(families.stdout) == {"create_local_backbone": 6, "fetch_checkpoint": 6, "prepare_dataset": 3,
                                           "train_head": 36, "table4": 1}


def job_priorities(output: str) -> list[tuple[str, str, int]]:
    """(rule, wildcards, priority) of every job a verbose dry run lists."""
    return [(m.group(1), m.group(2), int(m.group(3))) for m in re.finditer(
        r"^rule (\w+):\n(?:    (?!wildcards:)[^\n]*\n)*?    wildcards: ([^\n]*)\n    priority: (\d+)$", output, re.M)]


def test_jobs_that_others_wait_for_start_first_then_the_longest_heads(tmp_path):
    """Datasets and backbones before any head job (each one gates heads), the longest pretraining
    first; head jobs by their training steps (the study's fine-tuned COCO jobs at 1200 first), so
    that the shortest jobs fill the two cores at the end of the DAG."""
    ws = make_workspace(tmp_path / "ws")
    result = snakemake(ws, "-n", "--verbose", "results/table1.csv", "--configfile", "params/default.yaml",
                       "params/study.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_priorities(result.stdout + result.stderr)
    assert len(jobs) == sum(job_counts(result.stdout).values()) - 1  # every job but table1 (no wildcards)
    heads = {(dict(w.split("=") for w in wildcards.split(", "))["task"], dict(w.split("=") for w in
             wildcards.split(", "))["mode"], priority) for rule, wildcards, priority in jobs if rule == "train_head"}
    assert heads == {("coco", "frozen", 300), ("coco", "finetune", 1200), ("ade20k", "frozen", 250),
                     ("ade20k", "finetune", 250), ("k400", "frozen", 1000), ("k400", "finetune", 1000)}
    gates = {wildcards: priority for rule, wildcards, priority in jobs if rule != "train_head"}
    assert min(gates.values()) > max(priority for _, _, priority in heads)
    backbones = {w.removeprefix("name="): p for w, p in gates.items() if w.startswith("name=") and "ext=" not in w}
    assert max(backbones, key=backbones.get) == "tiny-swin-supervised-large"  # 4500 steps: first


def test_ci_run_produces_table1(ci_run):
    ws, result = ci_run
    assert result.returncode == 0, result.stderr[-5000:]
    table = pd.read_csv(ws / "results" / "table1.csv")
    assert table[["backbone", "mode"]].values.tolist() == [["tiny-swin-none", "frozen"],
                                                           ["tiny-swin-none", "finetune"]]
    assert list(table.columns) == ["backbone", "pretraining", "mode", "seeds", "coco_box_ap", "coco_mask_ap",
                                   "ade20k_miou", "k400_top1"]
    assert table["coco_box_ap"].between(0, 100).all() and table["coco_mask_ap"].between(0, 100).all()
    assert table["ade20k_miou"].between(0, 100).all() and table["k400_top1"].between(0, 100).all()
    assert (ws / "checkpoints/tiny-swin-none.safetensors.sha256").exists()
    assert (ws / "runs/coco/tiny-swin-none/frozen/seed0/state.pt").exists()
    metrics = json.loads((ws / "results" / "table1.json").read_text())  # the same numbers, for DVC metrics
    assert metrics["tiny-swin-none"]["frozen"]["k400_top1"] == pytest.approx(table.loc[0, "k400_top1"])
    markdown = (ws / "results" / "table1.md").read_text()
    assert markdown.startswith("ci: 1 seed per cell") and f"{table.loc[0, 'k400_top1']:.2f}" in markdown
    assert (ws / "results" / "table1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = pd.read_csv(ws / "results/curves/coco/tiny-swin-none/frozen/seed0.csv")
    assert curve["step"].tolist() == [2, 4, 6] and {"loss", "lr", "loss_mask"} <= set(curve.columns)


def test_the_ci_run_forks_its_head_and_table_jobs_from_one_warm_server_and_stops_it(ci_run):
    """`warm_start: true`: every head job and the table job went through the run's server
    (logs/warm-start.log), which ended with the run and removed its socket."""
    ws, result = ci_run
    assert result.returncode == 0, result.stderr[-3000:]
    log = (ws / "logs/warm-start.log").read_text()
    socket = re.search(r"serving on (\S+) ", log).group(1)
    forked = re.findall(r"job \d+: workflow_scripts/(\w+)\.py --out (\S+)", log)
    heads = sorted(str(p.relative_to(ws)) for p in ws.glob("runs/*/*/*/seed0/head.safetensors"))
    assert sorted(out for script, out in forked if script == "train") == heads and len(heads) == 6
    assert ("make_table", "results/table1.csv") in forked
    assert not Path(socket).exists() and not Path(socket).parent.exists()


def test_frozen_evaluations_fill_the_feature_cache(ci_run):
    ws, _ = ci_run
    for task in ("coco", "ade20k", "k400"):
        frozen = json.loads((ws / f"results/metrics/{task}/tiny-swin-none/frozen/seed0.json").read_text())
        finetune = json.loads((ws / f"results/metrics/{task}/tiny-swin-none/finetune/seed0.json").read_text())
        assert frozen["feature_cache"]["misses"] > 0, task  # one evaluation per backbone: all computed once
        assert finetune["feature_cache"] is None, task      # fine-tuned features are the run's own
    assert list((ws / "cache" / "features").rglob("*.feat"))


def test_second_run_does_nothing(ci_run, mlflow_server):
    ws, _ = ci_run
    result = snakemake(ws, "--cores", "2", "--configfile=params/ci.yaml", "results/table1.csv",
                       env={"MLFLOW_TRACKING_URI": mlflow_server.uri})
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr


def test_snakemake_killed_mid_dag_then_the_same_command_writes_the_same_table(ci_run, tmp_path):
    """SIGKILL to Snakemake alone while the K400 heads train (its jobs live on, orphaned), then the
    same command again: the dead run's locks are removed, and the table is the uninterrupted run's,
    byte for byte."""
    import shutil
    import signal
    import subprocess
    import time

    ws, result = ci_run
    assert result.returncode == 0, result.stderr[-3000:]
    copy = copy_workspace(ws, tmp_path / "ws")
    for folder in ("runs/k400", "results/metrics/k400"):  # the K400 jobs and the table are to do again
        shutil.rmtree(copy / folder)
    for table in (copy / "results").glob("table1.*"):
        table.unlink()
    env = {**tool_env(copy), "MLFLOW_TRACKING_URI": f"sqlite:///{copy / 'mlruns-killed.db'}"}
    args = ("--cores", "2", "--configfile=params/ci.yaml", "results/table1.csv")
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen([SNAKEMAKE, *args], cwd=copy, env=env, stdout=log, stderr=log,
                                   start_new_session=True)
        deadline = time.monotonic() + 300
        while not list((copy / "runs/k400").rglob("state.pt")) and process.poll() is None:
            assert time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)  # Snakemake only: its training jobs go on without it
        process.wait()
    assert not (copy / "results/table1.csv").exists(), "killed too late: the DAG had finished"
    assert list((copy / ".snakemake/locks").glob("*.lock")), "the killed run left no lock to recover from"

    again = snakemake(copy, *args, env=env)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "ended without releasing its locks" in again.stderr
    for name in ("table1.csv", "table1.json"):
        assert (copy / "results" / name).read_bytes() == (ws / "results" / name).read_bytes(), name
    assert not list((copy / ".snakemake/locks").glob("*.lock"))


def test_a_finished_head_job_forced_again_under_torchrun_evaluates_to_the_one_process_metrics(
        ci_run, mlflow_server, tmp_path):
    """A finished head job run again (`--forcerun`) with `resources.processes: 2` for K400: under
    torchrun (two gloo ranks on the CPU) both ranks resume from the state at the last step, train
    nothing, write the same head, and split the evaluation; the metric file holds exactly what the
    one-process evaluation of the CI run wrote."""
    ws, result = ci_run
    assert result.returncode == 0, result.stderr[-3000:]
    copy = copy_workspace(ws, tmp_path / "ws")
    (copy / "two-ranks.yaml").write_text("k400:\n  resources:\n    processes: 2\n")
    target = "results/metrics/k400/tiny-swin-none/frozen/seed0.json"
    head = "runs/k400/tiny-swin-none/frozen/seed0/head.safetensors"
    again = snakemake(copy, "--cores", "2", "-p", "--configfile", "params/ci.yaml", "two-ranks.yaml",
                      "--forcerun", target, "--until", target, "--rerun-triggers", "mtime",
                      env={"MLFLOW_TRACKING_URI": mlflow_server.uri})
    assert again.returncode == 0, again.stderr[-3000:]
    output = again.stdout + again.stderr
    assert "torchrun --standalone --nproc_per_node=2 workflow_scripts/train.py" in output
    assert job_counts(output) == {"train_head": 1}
    log = (copy / "logs/heads/k400/tiny-swin-none/frozen/seed0.log").read_text()
    steps = yaml.safe_load((copy / "params/ci.yaml").read_text())["k400"]["train"]["steps"]
    assert log.count(f"from step {steps}/{steps}") == 2, log[-3000:]  # both ranks, at the end: nothing trained
    before, after = (safe_open(str(w / head), "pt") for w in (ws, copy))  # the header's key order varies
    assert before.keys() == after.keys() and all(torch.equal(before.get_tensor(k), after.get_tensor(k))
                                                 for k in before.keys())
    assert {k: before.metadata()[k] for k in ("fingerprint", "steps")} == {
        k: after.metadata()[k] for k in ("fingerprint", "steps")}
    one, two = (json.loads((w / target).read_text()) for w in (ws, copy))
    drop = lambda metrics: {k: v for k, v in metrics.items() if "seconds" not in k}
    assert drop(two["metrics"]) == drop(one["metrics"]) and two["num_images"] == one["num_images"]


RUN_NAMES = [f"{task}-tiny-swin-none-{mode}-s0" for task in ("ade20k", "coco", "k400") for mode in ("finetune", "frozen")]


def test_mlflow_server_holds_a_parent_run_per_table_and_a_child_per_job(ci_run, mlflow_server):
    from mlflow.tracking import MlflowClient

    ws, result = ci_run
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name("ci")  # one experiment per study (profile)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server's store, not a local path
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("role") == "table"]
    assert [(p.info.run_name, p.info.status) for p in parents] == [("table1", "FINISHED")]
    parent = parents[0]
    children = [r for r in runs if r is not parent]
    assert sorted(r.info.run_name for r in children) == RUN_NAMES
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}

    # the table's cells on the parent, equal to results/table1.json; the table files as its artifacts
    table = json.loads((ws / "results/table1.json").read_text())
    expected = {f"tiny-swin-none/{mode}/{column}": value for mode, cells in table["tiny-swin-none"].items()
                for column, value in cells.items()}
    assert parent.data.metrics == pytest.approx(expected)
    assert sorted(a.path for a in client.list_artifacts(parent.info.run_id, "table")) == [
        f"table/table1.{ext}" for ext in ("csv", "json", "md", "png")]

    sha = (ws / "checkpoints/tiny-swin-none.safetensors.sha256").read_text().split()[0]
    config = yaml.safe_load((ws / "params/ci.yaml").read_text())
    keys_of_task: dict[str, set] = {}
    for run in children:
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        task = tags["task"]
        assert {tags["backbone"], tags["pretraining"], tags["seed"]} == {"tiny-swin-none", "none", "0"}
        assert tags["mode"] in ("frozen", "finetune") and tags["checkpoint_sha256"] == sha and tags["git_commit"]
        assert len(tags["data_sha256"]) == 64 and len(tags["head_sha256"]) == 16
        for key, value in config[task]["head"].items():  # head settings, filterable as tags
            assert tags[f"head.{key}"] == str(value), (task, key)
        expected = {"coco": {"coco/box_ap", "coco/mask_ap"}, "ade20k": {"ade20k/miou", "ade20k/pixel_acc"},
                    "k400": {"k400/top1", "k400/top5"}}[task]
        assert expected | {"train/loss", "train/lr", f"{task}/skipped_samples"} <= set(run.data.metrics)
        keys_of_task.setdefault(task, set(run.data.metrics))
        assert set(run.data.metrics) == keys_of_task[task]  # the same keys for every run of a task
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 3  # log_every 2 of 6 steps
        assert run.data.params["train.steps"] == "6" and int(run.data.params["trainable_params"]) > 0

        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts == {"seed0.json", "config.json", "plots", "predictions"}
        assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/seed0.png"]
        pictures = [a.path for a in client.list_artifacts(run.info.run_id, "predictions")]
        assert len(pictures) == 4 and all(p.endswith(".png") for p in pictures)
        local = ws / "results/predictions" / task / "tiny-swin-none" / tags["mode"] / "seed0"
        assert sorted(p.split("/")[-1] for p in pictures) == sorted(f.name for f in local.glob("*.png"))
        # the artifacts went through the server into its artifact store
        downloaded = client.download_artifacts(run.info.run_id, "config.json", str(ws / "downloads" / run.info.run_id))
        assert json.loads(Path(downloaded).read_text())["task"] == task
    assert len(list(mlflow_server.artifacts.rglob("*.png"))) == 6 * 5 + 1


def test_run_pictures_are_drawn(ci_run):
    """Prediction pictures and curve plots are real PNGs of sensible sizes (ground truth beside prediction)."""
    from PIL import Image

    ws, _ = ci_run
    for task, panels in (("coco", 2), ("ade20k", 3), ("k400", 1)):
        for mode in ("frozen", "finetune"):
            folder = ws / "results/predictions" / task / "tiny-swin-none" / mode / "seed0"
            pictures = sorted(folder.glob("*.png"))
            assert len(pictures) == 4, folder
            with Image.open(pictures[0]) as image:
                # each panel is the 64-px sample scaled up to 256 px (k400: four 128-px frames in a row)
                expected_width = 512 if task == "k400" else panels * 256 + 4 * (panels - 1)
                assert image.size[0] == expected_width and image.size[1] > 128, (task, image.size)
            with Image.open(ws / "results/plots" / task / "tiny-swin-none" / mode / "seed0.png") as plot:
                assert plot.size == (900, 320)


def test_report_holds_the_table_the_curves_and_the_pictures(ci_run):
    import base64

    ws, _ = ci_run
    result = snakemake(ws, "--configfile=params/ci.yaml", "--report", "results/report.html", "results/table1.csv")
    assert result.returncode == 0, result.stderr[-3000:]
    html = (ws / "results/report.html").read_text()
    # every file is embedded as a data URI (Snakemake 9's HTML report)
    embedded = re.findall(r"data:([a-z/]+);charset=utf8;filename=[^;]*;base64,([A-Za-z0-9+/=]+)", html)
    csvs = [base64.b64decode(data) for kind, data in embedded if kind == "text/csv"]
    assert csvs == [(ws / "results/table1.csv").read_bytes()]
    pngs = [data for kind, data in embedded if kind == "image/png"]
    assert len(pngs) == 1 + 6 + 6 * 4  # table chart, one curve per training, four pictures per evaluation
    for caption in ("Table 1 of study &quot;ci&quot;", "Training curve of the coco head",
                    "beside prediction", "frames of the centre view"):
        assert caption in html, caption


@pytest.fixture(scope="module")
def tables_run(dvc_study, tmp_path_factory):
    """Tables 2 and 3 on a copy of the study DVC reproduced (tables 1 to 4 of the CI profile, its
    head ladders included), tracked in the workspace's store, with a size ladder layered over it:
    a smaller Swin whose supervised pretraining is cut to a few steps (a registry written here),
    the study's random Swin, and a published reference row."""
    ws, _ = dvc_study
    copy = copy_workspace(ws, tmp_path_factory.mktemp("tables") / "ws")
    registry = yaml.safe_load((copy / "params/checkpoints.yaml").read_text())
    for entry in registry.values():
        if "train" in entry.get("create", {}):
            images = entry["create"]["images"]
            images.update(num_images=32, image_size=32, draw_size=64, neutral_until=[2, 4])
            entry["create"]["train"].update(steps=6, batch_size=8, warmup_steps=0, checkpoint_every=3, log_every=2)
    (copy / "params/checkpoints-ci.yaml").write_text(yaml.safe_dump(registry))
    (copy / "params/ci-tables.yaml").write_text(yaml.safe_dump({
        "registry": "params/checkpoints-ci.yaml",
        "table3": {"backbones": ["tiny-swin-supervised-xs", "tiny-swin-none"], "modes": ["frozen"],
                   "published": [{"backbone": "giant-published", "pretraining": "supervised", "mode": "frozen",
                                  "backbone_params": 3.0e9, "source": "a paper", "metrics": {"k400_top1": 81.7}}]}}))
    done_before = {p: p.stat().st_mtime_ns for p in (copy / "results/metrics").rglob("*.json")}
    uri = f"sqlite:///{copy / 'mlruns.db'}"
    args = ("results/table2.csv", "results/table3.csv", "--configfile", "params/ci.yaml", "params/ci-tables.yaml")
    result = snakemake(copy, "--cores", "2", *args, env={"MLFLOW_TRACKING_URI": uri})
    again = snakemake(copy, "-n", *args, env={"MLFLOW_TRACKING_URI": uri})
    return copy, result, again, done_before, uri


def test_tables_2_and_3_run_on_the_ci_profile(tables_run):
    ws, result, again, done_before, _ = tables_run
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Nothing to be done" in again.stdout + again.stderr
    # only the new backbone's jobs ran: what the study had made (tables 1 to 4) was reused, not rerun
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in done_before.items())
    assert job_counts(result.stdout + result.stderr) == {
        "create_local_backbone": 1, "fetch_checkpoint": 1, "train_head": 3, "table3": 1}

    table2 = pd.read_csv(ws / "results/table2.csv")
    assert table2[["task", "rung", "mode"]].values.tolist() == [
        [task, rung, mode] for task, rungs in (("coco", ("profile", "heavy")), ("ade20k", ("pd1-td4", "pd2-td2")),
                                               ("k400", ("depth0", "depth1")))
        for rung in rungs for mode in ("frozen", "finetune")]
    backbone = json.loads((ws / "results/metrics/coco/tiny-swin-none/frozen/seed0.json").read_text())["backbone_params"]
    frozen, finetune = table2[table2["mode"] == "frozen"], table2[table2["mode"] == "finetune"]
    assert (frozen["trainable_params"] == frozen["head_params"]).all()
    assert (finetune["trainable_params"].values == finetune["head_params"].values + backbone).all()
    assert (finetune["trainable_pct"] == 100).all()
    share = 100 * frozen["head_params"].values / (frozen["head_params"].values + backbone)
    assert frozen["trainable_pct"].values == pytest.approx(share, abs=0.005)  # the csv's two decimals
    size = table2.drop_duplicates(["task", "rung"]).set_index("rung")["head_params"]
    assert size["heavy"] > size["profile"] and size["pd2-td2"] != size["pd1-td4"] and size["depth0"] < size["depth1"]
    assert table2.loc[table2["task"] == "coco", "coco_box_ap"].between(0, 100).all()
    assert table2.loc[table2["task"] == "k400", "coco_box_ap"].isna().all()
    markdown = (ws / "results/table2.md").read_text()
    assert markdown.startswith("ci: head capacity, 1 seed per cell") and "### ADE20K" in markdown and " gap " in markdown
    assert (ws / "results/table2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    heavy = json.loads((ws / "results/metrics/heads/coco/heavy/tiny-swin-none/frozen/seed0.json").read_text())
    assert heavy["rung"] == "heavy" and heavy["head_params"] == size["heavy"]

    table3 = pd.read_csv(ws / "results/table3.csv")
    assert table3["backbone"].tolist() == ["tiny-swin-supervised-xs", "tiny-swin-none", "giant-published"]
    assert table3["source"].tolist() == ["measured", "measured", "published: a paper"]
    assert table3["backbone_params"].iloc[0] < table3["backbone_params"].iloc[1] < 3e9
    assert table3["k400_top1"].iloc[2] == 81.7 and table3["coco_box_ap"].iloc[:2].between(0, 100).all()
    assert "| giant-published" in (ws / "results/table3.md").read_text()
    assert (ws / "results/table3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tables_2_and_3_have_their_parent_runs(tables_run):
    from mlflow.tracking import MlflowClient

    ws, result, _, _, uri = tables_run
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("ci").experiment_id], max_results=500)
    parents = {r.info.run_name: r for r in runs if r.data.tags.get("role") == "table"}
    assert {name: run.info.status for name, run in parents.items() if name != "table1"} == {
        "table2": "FINISHED", "table3": "FINISHED", "table4": "FINISHED"}
    table2 = json.loads((ws / "results/table2.json").read_text())
    assert parents["table2"].data.metrics["coco/heavy/frozen/coco_box_ap"] == pytest.approx(
        table2["coco"]["heavy"]["frozen"]["coco_box_ap"])
    assert parents["table3"].data.metrics["giant-published/frozen/k400_top1"] == 81.7
    by_name = {r.info.run_name: r for r in runs}
    rung = by_name["coco[heavy]-tiny-swin-none-frozen-s0"]
    assert rung.data.tags["mlflow.parentRunId"] == parents["table2"].info.run_id and rung.data.tags["rung"] == "heavy"
    assert rung.data.tags["head.fpn_repeats"] == "2" and rung.data.params["head.box_head_convs"] == "2"
    assert by_name["k400-tiny-swin-supervised-xs-frozen-s0"].data.tags["mlflow.parentRunId"] == \
        parents["table3"].info.run_id
    assert sorted(a.path for a in client.list_artifacts(parents["table2"].info.run_id, "table")) == [
        f"table/table2.{ext}" for ext in ("csv", "json", "md", "png")]


def test_report_of_tables_2_and_3(tables_run):
    import base64

    ws, result, *_ = tables_run
    assert result.returncode == 0, result.stderr[-3000:]
    report = snakemake(ws, "--report", "results/report-tables.html", "results/table2.csv", "results/table3.csv",
                       "--configfile", "params/ci.yaml", "params/ci-tables.yaml")
    assert report.returncode == 0, report.stderr[-3000:]
    html = (ws / "results/report-tables.html").read_text()
    embedded = re.findall(r"data:([a-z/]+);charset=utf8;filename=[^;]*;base64,([A-Za-z0-9+/=]+)", html)
    csvs = {base64.b64decode(data) for kind, data in embedded if kind == "text/csv"}
    assert csvs == {(ws / f"results/table{n}.csv").read_bytes() for n in (2, 3)}
    for caption in ("Table 2 of study &quot;ci&quot;, head capacity", "Table 3 of study &quot;ci&quot;, backbone size",
                    "Table 2 as lines", "Table 3 as lines"):
        assert caption in html, caption


def test_tables_1_and_4_over_backbone_families_through_registry_entries_and_a_profile(ci_run, tmp_path):
    """The user's path for other families: registry entries listed as `backbones` in a profile layer;
    Snakemake creates, fetches and trains them all, and table 1 has a row for every backbone with a
    number for every task; table 4 the same rows with each backbone's size, from the same jobs.
    Frozen only here (the fine-tuned heads run the same code: test_families)."""
    import pandas as pd
    import yaml

    ws, result = ci_run
    assert result.returncode == 0, result.stderr[-3000:]
    copy = copy_workspace(ws, tmp_path / "ws")
    families = yaml.safe_load((copy / "params/families.yaml").read_text())["backbones"]
    env = {**tool_env(copy), "MLFLOW_TRACKING_URI": f"sqlite:///{copy / 'mlruns-families.db'}"}
    done = snakemake(copy, "--cores", "2", "--configfile", "params/ci.yaml", "params/families.yaml",
                     "--config", "modes=[frozen]", "--", "results/table1.csv", "results/table4.csv", env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    table = pd.read_csv(copy / "results/table1.csv")
    assert sorted(table["backbone"]) == sorted(families) and set(table["mode"]) == {"frozen"}
    metrics = [c for c in table.columns if c.split("_")[0] in ("coco", "ade20k", "k400")]
    assert len(metrics) >= 4 and table[metrics].notna().all().all(), table.to_string()
    ran = job_counts(done.stdout + done.stderr)
    assert ran.get("train_head") == 3 * (len(families) - 1), ran  # Swin's were done
    assert ran.get("table4") == 1
    table4 = pd.read_csv(copy / "results/table4.csv")
    assert table4["backbone"].tolist() == families and set(table4["source"]) == {"measured"}
    assert table4[metrics].equals(table.set_index("backbone").loc[families, metrics].reset_index(drop=True))
    sizes = dict(zip(table4["backbone"], table4["backbone_params"]))
    assert len(set(sizes.values())) == len(families) and all(n > 1000 for n in sizes.values()), sizes
    assert (copy / "results/table4.md").read_text().startswith("ci: backbone families, 1 seed per cell")
    assert (copy / "results/table4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dvc_repro_and_snakemake_write_the_same_table_byte_for_byte(ci_run, dvc_study):
    """The two ways in, each from scratch in its own workspace: `dvc repro` (the study stage runs
    Snakemake) and Snakemake alone. Last in this file: the DVC study is made by another worker."""
    ws, result = dvc_study
    snakemake_ws, snakemake_result = ci_run
    assert snakemake_result.returncode == 0, snakemake_result.stderr[-3000:]
    for name in ("table1.csv", "table1.json"):
        assert (ws / "results" / name).read_bytes() == (snakemake_ws / "results" / name).read_bytes(), name
