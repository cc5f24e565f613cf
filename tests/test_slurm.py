"""The CI-sized pipeline on a real two-node Slurm cluster through snakemake-executor-plugin-slurm:
every rule as a Slurm job, a training job over both nodes, and a training job stopped and requeued.

tests/slurm/cluster.sh installs Debian's slurm-wlm and munge where they are missing, starts
munged, slurmctld and a slurmd per node (each node its own network namespace and hostname), and
stops them and removes the network afterwards; the cluster starts once for this module. The user's
profile is profiles/slurm; these runs use profiles/slurm-ci, which differs only in what a test
cluster without an accounting database needs (--slurm-no-account, squeue for job status).
"""

import os
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from workspace import REPO, SNAKEMAKE, copy_workspace, make_workspace, snakemake, tool_env, wait_for

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]
CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"


def cluster(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", str(CLUSTER), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"tests/slurm/cluster.sh {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the Slurm test starts slurmctld and slurmd and needs root: run it as root, "
                    "or deselect it with -m 'not slurm'")
    cluster("install")
    state = tmp_path_factory.mktemp("slurm")
    cluster("start", str(state))
    try:
        yield state
    finally:
        cluster("stop", str(state))


def slurm_jobs() -> list[dict[str, str]]:
    """Every job the cluster still knows (finished ones stay for MinJobAge=600 s): id, state, nodes
    (count and list), comment."""
    out = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%T|%D|%N|%k"], capture_output=True,
                         text=True, check=True).stdout
    return [dict(zip(("id", "state", "num_nodes", "nodes", "comment"), line.split("|", 4)))
            for line in out.splitlines()]


HEAD = "runs/k400/tiny-swin-none/frozen/seed0/head.safetensors"
TRAIN_LOG = "logs/heads/k400/tiny-swin-none/frozen/seed0.log"


def k400_profile(ws: Path, name: str, modes=("frozen", "finetune"), **k400) -> str:
    """The CI profile cut to one task (K400), with ``k400`` keys (resources, train) replaced, as
    ``params/<name>.yaml`` of ``ws``; returns the --configfile argument."""
    profile = yaml.safe_load((REPO / "params/ci.yaml").read_text())
    profile["tasks"], profile["modes"] = ["k400"], list(modes)
    profile["table2"]["rungs"] = {"k400": profile["table2"]["rungs"]["k400"]}
    for key, values in k400.items():
        profile["k400"][key].update(values)
    (ws / "params" / f"{name}.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return f"--configfile=params/{name}.yaml"


@pytest.fixture(scope="module")
def k400_on_slurm(slurm_cluster, tmp_path_factory):
    """Table 1's DAG on the CI profile cut to one task (K400), every job through the cluster: the
    workspace, snakemake's result, its wall time and the Slurm jobs it submitted."""
    ws = make_workspace(tmp_path_factory.mktemp("slurm-k400") / "ws")
    before = {job["id"] for job in slurm_jobs()}
    start = time.monotonic()
    result = snakemake(ws, "--profile", "profiles/slurm-ci", k400_profile(ws, "ci-k400"), "results/table1.csv")
    return ws, result, time.monotonic() - start, [job for job in slurm_jobs() if job["id"] not in before]


def fresh_copy(ws: Path, copy: Path) -> Path:
    """A copy of the finished K400 workspace with its data and checkpoint, without its training runs."""
    copy_workspace(ws, copy)
    for path in (copy / "runs", copy / "results", copy / "logs"):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    return copy


def stops(ws: Path) -> list[str]:
    """The steps at which the training job said it stopped on SIGTERM, in order."""
    log = ws / TRAIN_LOG
    return re.findall(r"SIGTERM at step (\d+)/", log.read_text()) if log.exists() else []


def state_step(ws: Path) -> int:
    state = ws / HEAD.replace("head.safetensors", "state.pt")
    try:
        return int(torch.load(state, weights_only=True)["step"]) if state.exists() else 0
    except Exception:  # replaced while being read
        return 0


def test_ci_pipeline_runs_every_job_as_a_slurm_job(k400_on_slurm):
    """Every rule of table 1's DAG as a Slurm job, on the CI profile cut to one task (K400): the
    other tasks' jobs are the same rules with other wildcards."""
    ws, result, seconds, jobs = k400_on_slurm
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    print(f"CI-sized K400 pipeline through Slurm: {seconds:.0f} s")

    table = pd.read_csv(ws / "results" / "table1.csv")
    assert table[["backbone", "mode"]].values.tolist() == [["tiny-swin-none", "frozen"], ["tiny-swin-none", "finetune"]]
    assert table["k400_top1"].notna().all() and "coco_box_ap" not in table

    # Each of the 6 jobs went through sbatch: the cluster ran it to completion under the rule's name
    # (the plugin puts rule and wildcards in the job's comment) and the plugin kept its sbatch log.
    rules = sorted(job["comment"].split("_wildcards")[0] for job in jobs)
    assert rules == sorted(["rule_prepare_dataset", "rule_create_local_backbone", "rule_fetch_checkpoint"]
                           + ["rule_train_head"] * 2 + ["rule_table1"]), rules
    assert {job["state"] for job in jobs} == {"COMPLETED"}, jobs
    assert {job["num_nodes"] for job in jobs} == {"1"}
    logs = sorted(p.relative_to(ws / "logs" / "slurm").parts[0] for p in (ws / "logs" / "slurm").rglob("*.log"))
    assert logs == rules
    for job in jobs:  # inside the allocation, snakemake ran the rule's command through srun
        log = next((ws / "logs" / "slurm").rglob(f"{job['id']}.log")).read_text()
        rule = job["comment"].split("_wildcards")[0].removeprefix("rule_")
        assert f"Finished jobid: 0 (Rule: {rule})" in log, log[-2000:]


def test_a_training_job_over_two_nodes_trains_what_one_process_trains(k400_on_slurm, tmp_path):
    """`resources.nodes: 2, processes: 2`: one Slurm job on both nodes, srun starting a torchrun per
    node that meet at a c10d rendezvous, four gloo ranks sharing each step's batch of 4; the head
    equals the one-process head of the pipeline run (the same job spec: resources are not part of
    it) within the tolerances of two processes against one (tests/test_distributed.py)."""
    ws, result, _, _ = k400_on_slurm
    assert result.returncode == 0, result.stderr[-3000:]
    copy = fresh_copy(ws, tmp_path / "ws")
    before = {job["id"] for job in slurm_jobs()}
    done = snakemake(copy, "--profile", "profiles/slurm-ci", "-p",
                     k400_profile(copy, "two-nodes", resources={"nodes": 2, "processes": 2}), HEAD)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert "--nnodes=2 --nproc_per_node=2 --rdzv_backend=c10d" in done.stdout + done.stderr

    train = [job for job in slurm_jobs() if job["id"] not in before and job["comment"].startswith("rule_train_head")]
    assert [(job["state"], job["num_nodes"], job["nodes"]) for job in train] == [("COMPLETED", "2", "frz-n[1-2]")]
    ranks = re.findall(r"rank (\d) of 4 on (frz-n\d)", (copy / TRAIN_LOG).read_text())
    assert sorted(ranks) == [("0", "frz-n1"), ("1", "frz-n1"), ("2", "frz-n2"), ("3", "frz-n2")], ranks

    one, four = load_file(str(ws / HEAD)), load_file(str(copy / HEAD))
    assert one.keys() == four.keys()
    assert all(torch.allclose(one[k], four[k], atol=1e-4) for k in one)
    curve = "results/curves/k400/tiny-swin-none/frozen/seed0.csv"
    losses_one, losses_four = (pd.read_csv(w / curve)["loss"].tolist() for w in (ws, copy))
    assert losses_four == pytest.approx(losses_one, rel=1e-5)


def test_a_training_job_stopped_and_requeued_resumes_to_the_uninterrupted_head(k400_on_slurm, tmp_path):
    """A training job on the cluster, stopped twice and finished:
    1. SIGTERM to its job steps, as `--signal=TERM@<seconds>` (profiles/slurm) sends it ahead of the
       time limit: the job writes the state of the step it is in and fails; Snakemake's retry
       (`retries: 1`) submits it again and the new job resumes from that state.
    2. `scontrol requeue`, as preemption with PreemptMode=REQUEUE does it: SIGTERM, then the same
       Slurm job starts again and resumes.
    The head and curve equal those of the same job run uninterrupted (here, without Slurm)."""
    ws, result, _, _ = k400_on_slurm
    assert result.returncode == 0, result.stderr[-3000:]
    train = {"steps": 1200, "checkpoint_every": 200, "log_every": 100}
    reference = fresh_copy(ws, tmp_path / "reference")
    uninterrupted = subprocess.Popen(  # beside the Slurm run: one thread each on the two cores
        [SNAKEMAKE, "--cores", "1", k400_profile(reference, "long", modes=["frozen"], train=train), HEAD],
        cwd=reference, env=tool_env(reference), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    copy = fresh_copy(ws, tmp_path / "ws")
    before = {job["id"] for job in slurm_jobs()}
    start = time.monotonic()
    run = subprocess.Popen([SNAKEMAKE, "--profile", "profiles/slurm-ci",
                            k400_profile(copy, "long", modes=["frozen"], train=train), HEAD],
                           cwd=copy, env=tool_env(copy), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def training_job():
            jobs = [j for j in slurm_jobs() if j["id"] not in before and j["comment"].startswith("rule_train_head")]
            return [j for j in jobs if j["state"] == "RUNNING"]

        first = wait_for(training_job, "the training job to run")[0]["id"]
        wait_for(lambda: state_step(copy) >= 200, "the first periodic state")
        print(f"first periodic state after {time.monotonic() - start:.0f} s")
        subprocess.run(["scancel", "--signal=TERM", first], check=True)
        stop_step = int(wait_for(lambda: stops(copy), "the job to stop")[0])
        assert state_step(copy) == stop_step  # the step it was in, not the periodic state before it

        second = wait_for(lambda: [j for j in training_job() if j["id"] != first], "Snakemake's retry")[0]["id"]
        print(f"retried after {time.monotonic() - start:.0f} s")
        wait_for(lambda: f"resuming runs/k400/tiny-swin-none/frozen/seed0 from step {stop_step}/1200"
                 in (copy / TRAIN_LOG).read_text(), "the retry to resume")
        wait_for(lambda: state_step(copy) > stop_step, "the next periodic state")
        subprocess.run(["scontrol", "requeue", second], check=True)
        # each start of the job writes its log anew
        requeued = int(wait_for(lambda: [s for s in stops(copy) if int(s) > stop_step], "the requeued job to stop")[0])
        # Slurm holds a requeued job for two minutes before it may start again; a cluster's
        # preempted jobs wait for their nodes anyway. Here it may start at once.
        wait_for(lambda: [j for j in slurm_jobs() if j["id"] == second and j["state"] == "PENDING"],
                 "the job to be requeued", 120)
        subprocess.run(["scontrol", "update", f"JobId={second}", "StartTime=now"], check=True)
        print(f"stopped at {stop_step} and {requeued}; {time.monotonic() - start:.0f} s")
        out, _ = run.communicate(timeout=600)
        print(f"finished after {time.monotonic() - start:.0f} s")
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, out[-6000:]
    log = (copy / TRAIN_LOG).read_text()
    assert f"resuming runs/k400/tiny-swin-none/frozen/seed0 from step {requeued}/1200" in log, log[-3000:]
    jobs = {j["id"]: j["state"] for j in slurm_jobs() if j["comment"].startswith("rule_train_head")}
    assert (jobs[first], jobs[second]) == ("FAILED", "COMPLETED")
    restarts = subprocess.run(["scontrol", "show", "job", second], capture_output=True, text=True).stdout
    assert "Restarts=1" in restarts, restarts

    _, err = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, err[-3000:]
    a, b = load_file(str(reference / HEAD)), load_file(str(copy / HEAD))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    curve = "results/curves/k400/tiny-swin-none/frozen/seed0.csv"
    assert (reference / curve).read_text() == (copy / curve).read_text()
