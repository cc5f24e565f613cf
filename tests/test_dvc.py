"""DVC: `dvc repro` runs the same Snakemake DAG, versions its products, and reruns only what changed.

One workspace (git + DVC, CI profile) goes through the life of a study in order: repro, a second
repro, push / delete / pull, a parameter changed through `dvc exp run -S`, and a Snakemake run
behind DVC's back.
"""

import hashlib
import re
import shutil

import pytest
import yaml

from frozenrep.tasks import TASK_NAMES

from workspace import copy_workspace, dvc, git, make_dvc_workspace, snakemake

pytestmark = pytest.mark.workflow
VERSIONED = ("data", "checkpoints", "results", "runs")
TABLES = tuple(f"results/table{n}.csv" for n in (1, 2, 3, 4))  # the study stage's targets


def digests(ws):
    return {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
            for top in VERSIONED for p in sorted((ws / top).rglob("*")) if p.is_file()}


def snakemake_jobs(output):
    """Jobs Snakemake ran, by rule, from its log lines."""
    counts = {}
    for rule in re.findall(r"^(?:local)?rule (\w+):$", output, re.M):
        counts[rule] = counts.get(rule, 0) + 1
    return counts


@pytest.fixture(scope="module")
def study(dvc_study, tmp_path_factory):
    """A copy of the study DVC reproduced from scratch, for the tests below to change in order."""
    ws, result = dvc_study
    return copy_workspace(ws, tmp_path_factory.mktemp("dvc-life") / "ws"), result


def test_dvc_repro_runs_every_stage_once_and_locks_the_study(study):
    """(The table it writes is Snakemake's byte for byte: test_workflow.py, at its end.)"""
    ws, result = study
    assert sorted(re.findall(r"Running stage '([\w@]+)'", result.stdout)) == [
        "checkpoints", "dataset@ade20k", "dataset@coco", "dataset@k400", "study"]
    # table 2's rungs with the profile's head are table 1's jobs, run once; its other rungs have their own
    jobs = snakemake_jobs(result.stdout + result.stderr)
    assert {rule: jobs.get(rule) for rule in ("train_head", "train_head_rung")} == {"train_head": 6, "train_head_rung": 6}
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    assert lock["stages"]["study"]["params"]["params/ci.yaml"]["k400"]["train"]["steps"] == 6
    assert {o["path"] for o in lock["stages"]["study"]["outs"]} >= {"results/metrics", "results/table1.csv",
                                                                    "results/table1.json", "results/curves",
                                                                    "results/table2.csv", "results/table3.json",
                                                                    "results/table4.csv", "results/table4.json"}


def test_second_repro_does_nothing_and_snakemake_agrees(study):
    ws, _ = study
    again = dvc(ws, "repro")
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout
    assert "Data and pipelines are up to date" in again.stdout
    dry = snakemake(ws, "-n", "--configfile=params/ci.yaml", "results/table1.csv")
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]


def test_push_delete_pull_restores_everything_byte_identical(study):
    ws, _ = study
    before = digests(ws)
    assert any(k.startswith("data/k400/videos/") for k in before) and "checkpoints/tiny-swin-none.safetensors" in before
    pushed = dvc(ws, "push")
    assert pushed.returncode == 0, pushed.stderr
    for top in ("data", "checkpoints", "results"):
        shutil.rmtree(ws / top)
    pulled = dvc(ws, "pull")
    assert pulled.returncode == 0, pulled.stderr
    assert digests(ws) == before
    status = dvc(ws, "status")
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    # DVC restores files in its own order, so their modification times say nothing about the DAG:
    # `snakemake --touch` (README, "DVC") tells Snakemake they are up to date, and changes no byte.
    touched = snakemake(ws, "--touch", "--cores", "1", "--configfile=params/ci.yaml", *TABLES)
    assert touched.returncode == 0, touched.stderr[-3000:]
    dry = snakemake(ws, "-n", "--configfile=params/ci.yaml", *TABLES)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    assert digests(ws) == before
    assert "Data and pipelines are up to date" in dvc(ws, "status").stdout


# a K400 setting reruns the K400 jobs of table 1 (frozen and fine-tuned; table 3's frozen one is the
# same job) and of table 2's other K400 rung, then the four tables
K400_JOBS = {"train_head": 2, "train_head_rung": 2, "table1": 1, "table2": 1, "table3": 1, "table4": 1}


def test_one_task_parameter_reruns_only_that_tasks_jobs_and_the_tables(study):
    ws, _ = study
    result = dvc(ws, "exp", "run", "-S", "params/ci.yaml:k400.train.lr=0.002")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert snakemake_jobs(result.stdout + result.stderr) == K400_JOBS
    assert re.findall(r"Running stage '([\w@]+)'", result.stdout) == ["study"]
    ran = [path for line in re.findall(r"^\s+output: (.+)$", result.stdout + result.stderr, re.M)
           for path in line.split(", ")]
    assert ran and all("/k400/" in path or path.startswith("results/table") for path in ran), ran
    params = dvc(ws, "params", "diff")
    assert re.search(r"params/ci.yaml\s+k400.train.lr\s+0.001\s+0.002", params.stdout), params.stdout
    metrics = dvc(ws, "metrics", "diff", "--all")
    assert "tiny-swin-none.frozen.k400_top1" in metrics.stdout, metrics.stdout


def test_after_a_snakemake_run_dvc_status_says_what_dvc_will_do(study):
    ws, _ = study
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "experiment applied")
    config = yaml.safe_load((ws / "params/ci.yaml").read_text())
    depth0 = next(rung for rung in config["table2"]["rungs"]["k400"] if rung["name"] == "depth0")
    depth0["head"]["spatial_pool"] = 2  # one table-2 rung's head: its two jobs, then table 2
    (ws / "params/ci.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    ran = snakemake(ws, "--cores", "2", "--configfile=params/ci.yaml", *TABLES)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-3000:]
    assert snakemake_jobs(ran.stdout + ran.stderr) == {"train_head_rung": 2, "table2": 1}
    status = dvc(ws, "status").stdout
    assert re.search(r"study:[\s\S]*changed deps:[\s\S]*params/ci.yaml:[\s\S]*table2", status), status
    assert re.search(r"changed outs:[\s\S]*modified:\s+results/metrics", status), status
    # DVC runs the study stage; Snakemake finds its products up to date and runs no job
    repro = dvc(ws, "repro")
    assert repro.returncode == 0 and re.findall(r"Running stage '([\w@]+)'", repro.stdout) == ["study"]
    assert "Nothing to be done" in repro.stdout + repro.stderr and not snakemake_jobs(repro.stdout + repro.stderr)
    assert "Data and pipelines are up to date" in dvc(ws, "status").stdout


@pytest.mark.parametrize("profile", ["params/default.yaml", "params/paper.yaml", "params/ci.yaml"])
def test_each_profile_is_one_switch_away_and_declares_real_keys(tmp_path, profile):
    from dvc.repo import Repo

    ws = make_dvc_workspace(tmp_path / "ws", profile, tmp_path / "remote")
    with Repo(str(ws)) as repo:
        stages = {stage.name: stage for stage in repo.index.stages}
        assert {name: stage.cmd for name, stage in stages.items()} == {
            **{f"dataset@{d}": f"snakemake --cores all --configfile={profile} data/{d}.manifest.json"
               for d in TASK_NAMES},
            "checkpoints": f"snakemake --cores all --configfile={profile} all_checkpoints",
            "study": f"snakemake --cores all --configfile={profile} {' '.join(TABLES)}"}
        config = yaml.safe_load((ws / profile).read_text())
        for name, stage in stages.items():
            code = [dep.def_path for dep in stage.deps if not hasattr(dep, "params")
                    and dep.def_path.split("/")[0] in ("src", "rules", "workflow_scripts", "params")]
            assert code and all((ws / path).exists() for path in code), f"{name}: a dependency does not exist: {code}"
            keys = [key for dep in stage.deps if hasattr(dep, "params") and dep.def_path == profile
                    for key in dep.params]
            assert keys, f"{name} declares no parameter of {profile}"
            for key in keys:  # every declared key exists in the profile
                node = config
                for part in key.split("."):
                    assert isinstance(node, dict) and part in node, f"{name}: {key} is not in {profile}"
                    node = node[part]
    dry = dvc(ws, "repro", "--dry", "dataset@coco")
    assert dry.returncode == 0 and f"> snakemake --cores all --configfile={profile} data/coco.manifest.json" in dry.stdout
    assert not (ws / "data").exists()
