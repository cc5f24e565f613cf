"""Faults: a training job killed with SIGKILL resumes to the same result; a failing job leaves no
output that looks complete, marks its MLflow run FAILED, and touches nothing another job made."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from workspace import REPO, copy_workspace, in_this_process, job_spec, metrics_of, snakemake, tool_env

from frozenrep.jobs import Evaluation, run_training
from frozenrep.tasks import TASK_NAMES

pytestmark = pytest.mark.slow

PYTHON = sys.executable


@pytest.fixture(scope="module", params=[*TASK_NAMES, "coco/detectron2"])
def job_inputs(request, job_root):
    """For one task (COCO also on its Detectron2 engine): its CI-sized dataset with manifest beside
    the backbone, and an 8-step job spec (a state every 2 steps: room to be killed between two of
    them, and to resume after)."""
    root, entry = job_root
    task, _, engine = request.param.partition("/")
    spec = job_spec(root, entry, task, "faults", steps=8, checkpoint_every=2, log_every=2)
    if engine:
        spec["task_config"]["engine"] = engine
    return root, spec


def manifest(root, spec):
    return str(root / f"{spec['task']}.manifest.json")


def train_cmd(root, spec, out, metrics=None):
    """The head job's command; with ``metrics``, it evaluates the trained head too."""
    return [PYTHON, str(REPO / "workflow_scripts/train.py"), "--spec", json.dumps(spec), "--checkpoint",
            str(root / "tiny.safetensors"), "--manifest", manifest(root, spec), "--out", str(out),
            "--curve", str(out.parent / "curve.csv"), *(["--metrics", str(metrics)] if metrics else [])]


def env():
    return {**os.environ, "MLFLOW_TRACKING_URI": ""}


def test_sigkill_at_a_random_step_then_rerun_gives_the_same_head_and_metrics(job_inputs, tmp_path):
    root, spec = job_inputs
    whole = tmp_path / "whole" / "head.safetensors"  # the uninterrupted job (here: its imports are loaded)
    in_this_process(run_training, spec, root / "tiny.safetensors", Path(manifest(root, spec)), whole,
                    whole.parent / "curve.csv", evaluation=Evaluation(tmp_path / "whole.json"))

    killed = tmp_path / "killed" / "head.safetensors"
    state = killed.parent / "state.pt"
    target = random.Random(spec["task"]).choice(range(2, 6, 2))  # kill after this checkpoint (seeded: repeatable)
    process = subprocess.Popen(train_cmd(root, spec, killed, tmp_path / "killed.json"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env())
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists() and torch.load(state, weights_only=True)["step"] >= target:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not killed.exists(), "killed too late: the job had already finished"
    step_at_kill = torch.load(state, weights_only=True)["step"]
    assert target <= step_at_kill < 8
    assert not (tmp_path / "killed.json").exists()
    subprocess.run(train_cmd(root, spec, killed, tmp_path / "killed.json"), check=True, capture_output=True, env=env())

    a, b = load_file(str(whole)), load_file(str(killed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the loss curve survives the kill too: every logged step, the same values
    assert (whole.parent / "curve.csv").read_bytes() == (killed.parent / "curve.csv").read_bytes()
    assert metrics_of(tmp_path / "whole.json") == metrics_of(tmp_path / "killed.json")


def test_stop_signals_save_the_state_of_that_step_and_the_reruns_resume_to_the_same_head(job_root, tmp_path):
    """SIGUSR1 (SLURM's warning ahead of the time limit) and then, in the resumed job, SIGTERM
    (preemption, a cancelled job) mid-training: each time the job writes its state at the end of the
    step it is in, not only at the last periodic one, and ends by that signal, its MLflow run KILLED.
    The same command resumes it each time; the end is the uninterrupted head and curve, in one run."""
    from mlflow.tracking import MlflowClient

    root, entry = job_root
    spec = job_spec(root, entry, "k400", "stops", steps=12, checkpoint_every=4, log_every=1)
    whole = tmp_path / "whole" / "head.safetensors"
    in_this_process(run_training, spec, root / "tiny.safetensors", Path(manifest(root, spec)), whole,
                    whole.parent / "curve.csv")

    stopped = tmp_path / "stopped" / "head.safetensors"
    state = stopped.parent / "state.pt"
    client, runs = MlflowClient(tracking_uri=spec["tracking"]["uri"]), set()
    for signum, periodic in ((signal.SIGUSR1, 4), (signal.SIGTERM, 8)):
        process = subprocess.Popen(train_cmd(root, spec, stopped), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, env=env())
        deadline = time.monotonic() + 300
        while not (state.exists() and torch.load(state, weights_only=True)["step"] >= periodic):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
            time.sleep(0.01)
        process.send_signal(signum)  # in the step after the periodic state
        stderr = process.communicate(timeout=120)[1]
        assert process.returncode == -signum, stderr[-3000:]  # ended by the signal it was sent
        assert not stopped.exists(), "the job had finished before the signal"
        step = torch.load(state, weights_only=True)["step"]
        assert periodic < step < periodic + 4, step  # saved where it stopped: a SIGKILL leaves `periodic`
        name = signal.Signals(signum).name
        assert f"{name} at step {step}/12: the state is in {state}; run the job again" in stderr
        killed = client.search_runs([client.get_experiment_by_name("stops").experiment_id],
                                    filter_string="attributes.status = 'KILLED'")
        assert len(killed) == 1 and name in killed[0].data.tags["error"]
        runs.add(killed[0].info.run_id)

    subprocess.run(train_cmd(root, spec, stopped), check=True, capture_output=True, env=env())
    a, b = load_file(str(whole)), load_file(str(stopped))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (whole.parent / "curve.csv").read_bytes() == (stopped.parent / "curve.csv").read_bytes()
    [run] = runs  # the job's one run, resumed twice
    assert client.get_run(run).info.status == "FINISHED"


def test_failing_job_leaves_no_output_and_marks_its_mlflow_run_failed(job_inputs, tmp_path):
    from mlflow.tracking import MlflowClient

    root, spec = job_inputs
    spec = json.loads(json.dumps(spec))
    spec["task_config"]["train"]["lr"] = 1e30  # the loss becomes non-finite within a few steps
    spec["task_config"]["train"]["grad_clip"] = 0.0
    out = tmp_path / "run" / "head.safetensors"
    result = subprocess.run(train_cmd(root, spec, out), capture_output=True, text=True, env=env())
    advice = "lower the learning rate"  # frozenrep's message, also where the engine finds the divergence first
    assert result.returncode != 0 and "non-finite" in result.stderr and advice in result.stderr
    assert not out.exists() and not list(out.parent.glob("*.tmp"))
    client = MlflowClient(tracking_uri=spec["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("faults").experiment_id],
                              filter_string=f"attributes.status = 'FAILED' and tags.task = '{spec['task']}'")
    assert runs and advice in runs[0].data.tags["error"]


@pytest.mark.workflow
def test_a_failing_job_does_not_touch_what_other_jobs_made(ci_run, tmp_path):
    """From the finished CI workspace, with one head job per other task (its outputs deleted, its
    state kept) and every ADE20K job to do again and an ADE20K mask broken: under --keep-going the
    ADE20K jobs fail on that file, the other jobs run, and nothing that was there changes."""
    import shutil

    ws, result = ci_run
    assert result.returncode == 0, result.stderr[-3000:]
    ws = copy_workspace(ws, tmp_path / "ws")
    for folder in [ws / "runs/ade20k", *(ws / "results").glob("*/ade20k")]:  # every ADE20K job's outputs
        shutil.rmtree(folder)
    for task, mode in (("coco", "finetune"), ("k400", "frozen")):  # a head job to do again per other task
        job = f"{task}/tiny-swin-none/{mode}/seed0"
        for output in (f"runs/{job}/head.safetensors", f"results/metrics/{job}.json", f"results/curves/{job}.csv",
                       f"results/plots/{job}.png"):
            (ws / output).unlink()
        shutil.rmtree(ws / f"results/predictions/{job}")
    for path in (ws / "results").glob("table1.*"):
        path.unlink()
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (ws / "results").rglob("*") if p.is_file()}
    before.update({p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (ws / "runs").rglob("*") if p.is_file()})
    for task, mode in (("coco", "finetune"), ("k400", "frozen")):  # those jobs' runs, in this test's store
        del before[ws / f"runs/{task}/tiny-swin-none/{mode}/seed0/mlflow_run_id"]
    masks = sorted((ws / "data/ade20k/annotations/validation").glob("*.png"))
    masks[0].write_bytes(b"not a png")  # every ade20k job now fails on this file
    env = {**tool_env(ws), "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlruns-faults.db'}"}
    second = snakemake(ws, "--cores", "2", "--keep-going", "--configfile=params/ci.yaml", "results/table1.csv", env=env)
    output = second.stdout + second.stderr
    assert second.returncode != 0 and masks[0].name in output
    for path, (mtime, data) in before.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data, path
    assert not (ws / "results/table1.csv").exists()
    assert not list((ws / "runs").glob("ade20k/**/head.safetensors"))
    assert (ws / "results/metrics/coco/tiny-swin-none/finetune/seed0.json").exists()  # other jobs went on
    assert (ws / "results/metrics/k400/tiny-swin-none/frozen/seed0.json").exists()


def test_a_tracking_server_gone_mid_run_stops_neither_the_job_nor_the_next(job_root, tmp_path):
    """The MLflow server dies after the first checkpoint: the job still writes its head and its
    metrics and says tracking failed; the job run again with the server still gone (its outputs
    deleted: it trains nothing and evaluates again) writes its metrics too, untracked."""
    from conftest import running_mlflow_server

    root, entry = job_root
    spec = job_spec(root, entry, "k400", "tracking-gone", steps=30, checkpoint_every=2, log_every=2)
    head, metrics = tmp_path / "run" / "head.safetensors", tmp_path / "metrics.json"
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    (tmp_path / "server").mkdir()
    with running_mlflow_server(tmp_path / "server") as server, open(tmp_path / "train.log", "w") as log:
        env["MLFLOW_TRACKING_URI"] = server.uri
        process = subprocess.Popen(train_cmd(root, spec, head, metrics), stdout=log, stderr=log, env=env)
        state, deadline = head.parent / "state.pt", time.monotonic() + 300
        while not state.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
        assert process.wait(timeout=600) == 0, (tmp_path / "train.log").read_text()[-3000:]
    assert torch.load(state, weights_only=True)["step"] == 30 and head.is_file()
    assert f"MLflow tracking at {server.uri} failed" in (tmp_path / "train.log").read_text()
    first = metrics_of(metrics)
    assert "top1" in first
    head.unlink()
    metrics.unlink()
    done = subprocess.run(train_cmd(root, spec, head, metrics), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "untracked" in done.stderr and "from step 30/30" in done.stderr
    assert metrics_of(metrics) == first
