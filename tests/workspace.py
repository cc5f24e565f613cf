"""A copy of the workflow in a temporary directory, and a way to run snakemake in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "rules", "workflow_scripts", "params", "profiles", "envs")
DVC_FILES = ("src", "dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore")
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
DVC = str(Path(sys.executable).parent / "dvc")
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "frozenrep tests", "GIT_AUTHOR_EMAIL": "tests@frozenrep.invalid",
                "GIT_COMMITTER_NAME": "frozenrep tests", "GIT_COMMITTER_EMAIL": "tests@frozenrep.invalid"}


def make_workspace(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    return root


def copy_workspace(workspace: Path, copy: Path) -> Path:
    """A copy of a (finished) workspace, modification times and links kept: Snakemake sees it as up to date."""
    shutil.copytree(workspace, copy, symlinks=True)
    return copy


def make_dvc_workspace(root: Path, profile: str, remote: Path) -> Path:
    """A workspace that is also a git + DVC repository running ``profile``, with a local remote."""
    make_workspace(root)
    for name in DVC_FILES:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, dst)
    (root / "params" / "dvc-profile.yaml").write_text(f"profile: {profile}\n")
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "workspace"]):
        subprocess.run(command, cwd=root, env={**os.environ, **GIT_IDENTITY}, check=True, capture_output=True)
    result = dvc(root, "remote", "modify", "--local", "local", "url", str(remote))
    assert result.returncode == 0, result.stderr
    return root


def dvc(workspace: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([DVC, *args], cwd=workspace, env={**tool_env(workspace), **GIT_IDENTITY},
                          capture_output=True, text=True, timeout=timeout)


def git(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=workspace, env={**os.environ, **GIT_IDENTITY}, capture_output=True,
                          text=True, check=True)


def tool_env(workspace: Path) -> dict[str, str]:
    """The environment of an activated venv (DVC stages call `snakemake` by name), with no network."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{workspace / 'mlruns.db'}")
    # Anything that tried to reach the network would go to a closed loopback port and fail.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[var] = "http://127.0.0.1:9"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def snakemake(workspace: Path, *args: str, timeout: int = 900, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess:
    """Run snakemake in ``workspace``; ``env`` adds to (or overrides) :func:`tool_env`."""
    return subprocess.run([SNAKEMAKE, *args], cwd=workspace, env={**tool_env(workspace), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def resolved_profile(name: str = "ci.yaml") -> dict:
    """A profile as the workflow sees it: validated, with the schema's defaults filled in."""
    from frozenrep.config import load_profile

    return load_profile(REPO / "params" / name, REPO / "params/schemas/config.schema.yaml")


def job_spec(root: Path, entry, task: str, study: str, **train) -> dict:
    """A head job spec for ``task`` on the CI profile, as the rules pass it (the JSON
    of :class:`frozenrep.config.JobSpec`), its dataset generated under ``root`` (once) with its
    manifest beside it; ``train`` overrides keys of the task's train block."""
    import json

    from frozenrep import config as profiles
    from frozenrep.data import write_manifest
    from frozenrep.tasks import declaration

    config = resolved_profile()
    if not (root / f"{task}.manifest.json").exists():
        declaration(task).module("synthetic").generate(root / task, **config["datasets"][task]["generate"])
        summary = declaration(task).module("data").verify_layout(root / task)
        write_manifest(root / f"{task}.manifest.json", task, summary, "generate")
    spec = profiles.job_spec(config, {entry.name: entry}, task, entry.name, "frozen", 0, study=study, device="cpu",
                             tracking={"uri": f"sqlite:///{root / 'mlruns.db'}"})
    spec.task_config["train"].update(train)
    return json.loads(spec.to_json())


def wait_for(condition, what: str, timeout: float = 300, interval: float = 0.2):
    """``condition()``'s first true value, asked every ``interval`` seconds; an AssertionError naming
    ``what`` after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def in_this_process(run, spec: dict, *args, **kwargs) -> None:
    """``run`` (``frozenrep.jobs.run_training``) as its workflow script calls it,
    on one thread as the rules give it, but in this process: without a new interpreter's imports."""
    import json

    import torch

    from frozenrep.config import JobSpec
    from frozenrep.runtime import job_process

    threads = torch.get_num_threads()
    try:
        with job_process(1):
            run(JobSpec.from_json(json.dumps(spec)), *args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def evaluate_here(spec: dict, checkpoint: Path, manifest: Path, head: Path, out: Path) -> dict:
    """The head job of ``head`` with its evaluation, in this process (:func:`in_this_process`): a
    job trained to its end (its state file beside ``head``) trains nothing and only evaluates. Its
    metrics without wall-clock times."""
    from frozenrep.jobs import Evaluation, run_training

    in_this_process(run_training, spec, checkpoint, manifest, head, evaluation=Evaluation(out))
    return metrics_of(out)


def metrics_of(path: Path) -> dict:
    """A metrics file's metrics without wall-clock times."""
    import json

    return {k: v for k, v in json.loads(path.read_text())["metrics"].items() if "seconds" not in k}


def ground_truth_outputs(ds, shift=0.0):
    """Model-style outputs that reproduce the ground truth (boxes shifted by `shift` x their width)."""
    import torch

    outputs = []
    for index in range(len(ds)):
        _, target = ds[index]
        boxes = target["boxes"].clone()
        widths = boxes[:, 2] - boxes[:, 0]
        boxes[:, [0, 2]] += shift * widths[:, None]
        masks = target["masks"].float()[:, None]
        if shift:
            masks = torch.roll(masks, shifts=int(shift * widths.mean().item()) if len(widths) else 0, dims=-1)
        outputs.append({"boxes": boxes, "labels": target["labels"], "scores": torch.ones(len(boxes)),
                        "masks": masks})
    return outputs
