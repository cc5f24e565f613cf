"""Data-parallel training under torchrun (gloo on the CPU): two processes, each taking half of
every step's batch, train what one process with the whole batch trains, for every head; a job killed under torchrun
resumes to the same weights; evaluation pools the ranks' predictions; only rank 0 writes files and
tracks the run."""

import json
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from workspace import REPO, evaluate_here, in_this_process, job_spec

from frozenrep.jobs import run_training
from frozenrep.tasks import TASK_NAMES

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def job(root, entry, task, batch_size, name, engine=None):
    spec = job_spec(root, entry, task, "ddp", steps=6, batch_size=batch_size, checkpoint_every=3, log_every=1)
    if engine is not None:  # COCO's detection engine
        spec["task_config"]["engine"] = engine
    out = root / name / "head.safetensors"
    manifest = root / f"{task}.manifest.json"
    return ["workflow_scripts/train.py", "--spec", json.dumps(spec), "--checkpoint", str(root / "tiny.safetensors"),
            "--manifest", str(manifest), "--out", str(out), "--curve", str(out.parent / "curve.csv")], out


def single_process_head(root, entry, task, engine=None):
    """The one-process job with the whole batch (4), trained once in this process (the script's call):
    the reference of the two-process training and the head the evaluations score."""
    cmd, out = job(root, entry, task, 4, f"{task}-{engine or ''}single", engine)
    if not out.exists():
        spec = json.loads(cmd[cmd.index("--spec") + 1])
        in_this_process(run_training, spec, root / "tiny.safetensors", root / f"{task}.manifest.json", out,
                        out.parent / "curve.csv")
    return cmd, out


def run(cmd):
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def vit_root(tmp_path_factory, registry):
    """As ``job_root``, with the plain ViT (its simple feature pyramid trains with the head)."""
    from frozenrep.local_backbones import create_local_backbone

    root = tmp_path_factory.mktemp("vit-jobs")
    create_local_backbone(registry["tiny-vit-none"], root / "tiny.safetensors")
    return root, registry["tiny-vit-none"]


# each task's head once (COCO's on both detection engines); ADE20K's on the plain ViT, whose simple
# feature pyramid trains with the head
@pytest.mark.parametrize("backbone, task, engine", [("swin", "coco", None), ("swin", "coco", "detectron2"),
                                                    ("vit", "ade20k", None), ("swin", "k400", None)])
def test_two_processes_train_what_one_process_with_the_whole_batch_trains(request, backbone, task, engine):
    root, entry = request.getfixturevalue("job_root" if backbone == "swin" else "vit_root")
    _, single = single_process_head(root, entry, task, engine)
    ddp_cmd, ddp = job(root, entry, task, 4, f"{task}-{engine or ''}ddp", engine)  # the same batch of 4 per step: 2 per process
    log = run([*TORCHRUN, *ddp_cmd]).stderr
    assert "Traceback" not in log

    a, b = load_file(str(single)), load_file(str(ddp))
    assert a.keys() == b.keys()
    curve_a, curve_b = pd.read_csv(single.parent / "curve.csv"), pd.read_csv(ddp.parent / "curve.csv")
    assert curve_a["step"].tolist() == curve_b["step"].tolist() == [1, 2, 3, 4, 5, 6]
    # The same trajectory, and the same weights up to float reassociation, for every head: random
    # draws inside the losses (Mask R-CNN's anchor and proposal sampling, Mask2Former's points) are
    # made per sample (frozenrep.randomness), and every loss is normalised over the global batch.
    # Weight tolerance 1e-4: a parameter whose gradient is near zero (the attention key bias, which
    # softmax ignores) still gets a full AdamW step, so summation-order noise shows there; measured
    # 3.1e-5 (K400), 3.4e-6 (COCO) and 5.7e-5 (ADE20K) after 6 steps, losses within 1.3e-7.
    # Without the per-sample draws and the global normalisers COCO's losses were 1.6e-2 apart.
    losses_a, losses_b = curve_a["loss"].tolist(), curve_b["loss"].tolist()
    print(f"{task}: losses {losses_a} vs {losses_b}; largest weight gap "
          f"{max(float((a[k] - b[k]).abs().max()) for k in a):.2e}")
    # COCO on an AVX-512 Xeon: the frozen backbone's features of 2 and of 4 images differ in float
    # rounding there, and the RPN's top-k and NMS can then keep other proposals at near-ties; measured
    # losses within 3.8e-4 (relative) and weights within 7.7e-4 after 6 steps. Still 8x tighter than
    # the gap without the fixes.
    rel, atol = (2e-3, 2e-3) if task == "coco" else (1e-5, 1e-4)
    assert losses_b == pytest.approx(losses_a, rel=rel)
    assert all(torch.allclose(a[k], b[k], atol=atol) for k in a)

    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    engine_filter = f" and params.engine = '{engine or 'torchvision'}'" if task == "coco" else ""
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id],
                              f"tags.task = '{task}'{engine_filter}")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)  # one per job, not per rank
    assert sorted(len(client.get_metric_history(r.info.run_id, "train/loss")) for r in runs) == [6, 6]


def test_a_job_killed_under_torchrun_resumes_to_the_uninterrupted_weights(job_root):
    """SIGKILL to the whole torchrun job (launcher and both ranks) after a checkpoint, then the same
    command again, stopped by SIGTERM to the launcher alone (as preemption or Snakemake does it;
    torchrun passes it to the ranks), then once more: each run resumes from rank 0's state (after the
    SIGTERM, of the step both ranks stopped after), and the last ends with the uninterrupted run's
    weights, curve and MLflow run."""
    root, entry = job_root
    spec = job_spec(root, entry, "k400", "ddp-resume", steps=12, batch_size=4, checkpoint_every=2, log_every=1)

    def command(name):
        out = root / name / "head.safetensors"
        return [*TORCHRUN, "workflow_scripts/train.py", "--spec", json.dumps(spec), "--checkpoint",
                str(root / "tiny.safetensors"), "--manifest", str(root / "k400.manifest.json"), "--out", str(out),
                "--curve", str(out.parent / "curve.csv")], out

    whole_cmd, whole = command("whole")
    run(whole_cmd)
    killed_cmd, killed = command("killed")
    state = killed.parent / "state.pt"
    process = subprocess.Popen(killed_cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists() and torch.load(state, weights_only=True)["step"] >= 4:
            break
        time.sleep(0.01)
    # torchrun starts its workers in sessions of their own: kill the launcher and every rank at once
    launcher = psutil.Process(process.pid)
    for proc in [launcher, *launcher.children(recursive=True)]:
        proc.send_signal(signal.SIGKILL)
    process.wait()
    assert not killed.exists(), "killed too late: the job had already finished"
    step_at_kill = torch.load(state, weights_only=True)["step"]
    assert 4 <= step_at_kill < 12
    run_id = (killed.parent / "mlflow_run_id").read_text().split()[1]

    process = subprocess.Popen(killed_cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (torch.load(state, weights_only=True)["step"] >= 8 or process.poll() is not None):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)  # to torchrun, which sends it on to both ranks
    log = process.communicate(timeout=120)[1]
    assert f"resuming {killed.parent} from step {step_at_kill}/12" in log, log[-3000:]
    assert process.returncode != 0 and not killed.exists(), log[-3000:]
    step_at_stop = torch.load(state, weights_only=True)["step"]
    assert 8 < step_at_stop < 12, step_at_stop  # saved where both ranks stopped, past the periodic state
    assert log.count(f"SIGTERM at step {step_at_stop}/12: the state is in {state}") == 2, log[-3000:]

    log = run(killed_cmd).stderr
    assert f"resuming {killed.parent} from step {step_at_stop}/12" in log, log
    a, b = load_file(str(whole)), load_file(str(killed))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert pd.read_csv(killed.parent / "curve.csv")["loss"].tolist() == pytest.approx(
        pd.read_csv(whole.parent / "curve.csv")["loss"].tolist(), rel=1e-6)
    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    assert (killed.parent / "mlflow_run_id").read_text().split()[1] == run_id  # the same run, continued
    assert client.get_run(run_id).info.status == "FINISHED"
    assert sorted({m.step for m in client.get_metric_history(run_id, "train/loss")}) == list(range(1, 13))


@pytest.mark.parametrize("task", list(TASK_NAMES))
def test_two_process_evaluation_gives_the_single_process_metric(job_root, task):
    """Each rank scores every other validation sample; the pooled predictions give exactly the metric.
    Both evaluate the same weights: the finished one-process job, run again (it trains nothing), in
    this process and, on a copy of its run folder, under torchrun."""
    import shutil

    root, entry = job_root
    train_cmd, head = single_process_head(root, entry, task)
    spec = json.loads(train_cmd[train_cmd.index("--spec") + 1])
    copy = head.parent.with_name(head.parent.name + "-pooled")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(head.parent, copy)
    single, pooled = head.parent / "single.json", copy / "pooled.json"
    evaluate_here(spec, root / "tiny.safetensors", root / f"{task}.manifest.json", head, single)
    rerun = [*train_cmd[:train_cmd.index("--out")], "--out", str(copy / head.name), "--metrics", str(pooled)]
    log = run([*TORCHRUN, *rerun]).stderr
    assert "Traceback" not in log
    steps = spec["task_config"]["train"]["steps"]
    assert log.count(f"from step {steps}/{steps}") == 2, log[-3000:]  # both ranks resumed at the end

    a, b = json.loads(single.read_text()), json.loads(pooled.read_text())
    drop = {"seconds"}
    assert {k: v for k, v in b["metrics"].items() if k not in drop} == {k: v for k, v in a["metrics"].items()
                                                                        if k not in drop}
    assert b["num_images"] == a["num_images"]
    n = a["num_images"]  # each rank scored its own half, not the whole set
    assert set(re.findall(rf"evaluate {task}: \d+/(\d+) ", log)) == {str(n // 2), str((n + 1) // 2)}, log[-3000:]
    metric = {"coco": "box_ap", "ade20k": "miou", "k400": "top1"}[task]
    assert a["metrics"][metric] is not None
