"""The CI-sized pipeline on a real Slurm cluster through snakemake-executor-plugin-slurm.

tests/slurm/cluster.sh installs Debian's slurm-wlm and munge where they are missing, starts
munged, slurmctld and slurmd for one node, and stops the two Slurm daemons afterwards. The user's
profile is profiles/slurm; this run uses profiles/slurm-ci, which differs only in what a test
cluster without an accounting database needs (--slurm-no-account, squeue for job status).
"""

import os
import subprocess
import time

import pandas as pd
import pytest
import yaml

from workspace import REPO, make_workspace, snakemake

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
    """Every job the cluster still knows (finished ones stay for MinJobAge=600 s): id, state, comment."""
    out = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%T|%k"], capture_output=True,
                         text=True, check=True).stdout
    return [dict(zip(("id", "state", "comment"), line.split("|", 2))) for line in out.splitlines()]


def test_ci_pipeline_runs_every_job_as_a_slurm_job(slurm_cluster, tmp_path):
    """Every rule of table 1's DAG as a Slurm job, on the CI profile cut to one task (K400): the
    other tasks' jobs are the same rules with other wildcards."""
    ws = make_workspace(tmp_path / "ws")
    profile = yaml.safe_load((ws / "params/ci.yaml").read_text())
    profile["tasks"] = ["k400"]
    profile["table2"]["rungs"] = {"k400": profile["table2"]["rungs"]["k400"]}
    (ws / "params/ci-k400.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    before = {job["id"] for job in slurm_jobs()}
    start = time.monotonic()
    result = snakemake(ws, "--profile", "profiles/slurm-ci", "--configfile=params/ci-k400.yaml", "results/table1.csv")
    seconds = time.monotonic() - start
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    print(f"CI-sized K400 pipeline through Slurm: {seconds:.0f} s")

    table = pd.read_csv(ws / "results" / "table1.csv")
    assert table[["backbone", "mode"]].values.tolist() == [["tiny-swin-none", "frozen"], ["tiny-swin-none", "finetune"]]
    assert table["k400_top1"].notna().all() and "coco_box_ap" not in table

    # Each of the 8 jobs went through sbatch: the cluster ran it to completion under the rule's name
    # (the plugin puts rule and wildcards in the job's comment) and the plugin kept its sbatch log.
    jobs = [job for job in slurm_jobs() if job["id"] not in before]
    rules = sorted(job["comment"].split("_wildcards")[0] for job in jobs)
    assert rules == sorted(["rule_prepare_dataset", "rule_create_local_backbone", "rule_fetch_checkpoint"]
                           + ["rule_train_head"] * 2 + ["rule_evaluate_head"] * 2 + ["rule_table1"]), rules
    assert {job["state"] for job in jobs} == {"COMPLETED"}, jobs
    logs = sorted(p.relative_to(ws / "logs" / "slurm").parts[0] for p in (ws / "logs" / "slurm").rglob("*.log"))
    assert logs == rules
    for job in jobs:  # inside the allocation, snakemake ran the rule's command through srun
        log = next((ws / "logs" / "slurm").rglob(f"{job['id']}.log")).read_text()
        rule = job["comment"].split("_wildcards")[0].removeprefix("rule_")
        assert f"Finished jobid: 0 (Rule: {rule})" in log, log[-2000:]
