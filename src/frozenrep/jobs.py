"""The head job that the workflow script runs (one task, backbone, mode, seed): training, then the
evaluation of the trained head, in one process and one MLflow run."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from frozenrep.backbones import BackboneAdapter, build_backbone, trainable_state_dict
from frozenrep.config import JobSpec
from frozenrep.feature_cache import FeatureCache
from frozenrep.io import (atomic_dir, atomic_path, file_digest, fingerprint_of, write_bytes_atomic,
                          write_json_atomic, write_text_atomic)
from frozenrep.locks import job_lock
from frozenrep.progress import log
from frozenrep.runtime import pick_device, start_distributed
from frozenrep.tasks import Task, get_task
from frozenrep.tracking import RunLogger, flatten, git_commit, resolve_uri, run_name, tracked_run
from frozenrep.training import TrainConfig, train


def checkpoint_sha256(checkpoint: Path) -> str:
    sidecar = Path(str(checkpoint) + ".sha256")
    return sidecar.read_text().split()[0] if sidecar.exists() else file_digest(checkpoint)


def build_model(spec: JobSpec, checkpoint: Path, train_set: Any) -> torch.nn.Module:
    """The task's head on the registry backbone, seeded so that the head's init is reproducible."""
    torch.manual_seed(spec.seed)
    backbone = build_backbone(spec.entry, checkpoint, mode=spec.mode)
    return get_task(spec.task).build_head(backbone, train_set, spec.task_config, spec.entry)


def load_head_weights(model: torch.nn.Module, head: Path) -> dict[str, str]:
    """Load a trained head (``trainable_state_dict`` keys) into ``model``; return the file's metadata."""
    from safetensors import safe_open

    with safe_open(str(head), "pt") as handle:
        meta = handle.metadata() or {}
    state = load_file(str(head))
    expected = set(trainable_state_dict(model))
    if set(state) != expected:
        raise RuntimeError(f"head weights {head} do not match the model: missing {sorted(expected - set(state))[:5]}, "
                           f"unexpected {sorted(set(state) - expected)[:5]}; retrain it (delete the file).")
    model.load_state_dict(state, strict=False)
    return meta


def job_tags(spec: JobSpec, checkpoint: Path, manifest: Path, job: str) -> dict[str, Any]:
    """What a user filters runs on: the job's identity, its head settings (``head.<key>``, and
    ``head_sha256`` of the whole task config, equal for runs with the same settings), the code and
    the inputs' hashes."""
    head = flatten("head", spec.task_config["head"])
    return {"task": spec.task, "backbone": spec.backbone, "pretraining": spec.entry.pretraining,
            "mode": spec.mode, "seed": spec.seed, "job": job, "rung": spec.rung or "profile",
            "git_commit": git_commit(),
            "checkpoint_sha256": checkpoint_sha256(checkpoint), "data_sha256": file_digest(manifest),
            "head_sha256": fingerprint_of(spec.task_config)[:16], **head}


def spec_run_name(spec: JobSpec) -> str:
    return run_name(spec.task, spec.backbone, spec.mode, spec.seed, spec.rung)


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable parameters in the job's mode, and the backbone's and the head's (everything else) sizes."""
    backbone = {id(p) for m in model.modules() if isinstance(m, BackboneAdapter) for p in m.parameters()}
    params = list(model.parameters())
    return {"trainable_params": sum(p.numel() for p in params if p.requires_grad),
            "backbone_params": sum(p.numel() for p in params if id(p) in backbone),
            "head_params": sum(p.numel() for p in params if id(p) not in backbone)}


def job_fingerprint(spec: JobSpec, checkpoint: Path) -> str:
    return spec.fingerprint(checkpoint_sha256(checkpoint))


@dataclass
class Job:
    """What a head job starts from: its task, device, both splits and the model."""

    task: Task
    device: torch.device
    train_set: Any
    val_set: Any
    model: torch.nn.Module


def prepare_job(spec: JobSpec, checkpoint: Path, manifest: Path, device: torch.device | None = None) -> Job:
    """The task, the device, both splits (from the dataset manifest's root) and the model on the backbone."""
    task = get_task(spec.task)
    root = Path(json.loads(Path(manifest).read_text())["root"])
    train_set, val_set = task.datasets(root, spec.task_config)
    return Job(task, device or pick_device(spec.device), train_set, val_set, build_model(spec, checkpoint, train_set))


@dataclass(frozen=True)
class Evaluation:
    """What a head job writes after training, from the trained model in the same process: the
    metrics JSON; the first ``num_pictures`` validation samples drawn with their predictions into
    ``pictures``; a frozen backbone's features read from and written to ``feature_cache``."""

    metrics: Path
    pictures: Path | None = None
    num_pictures: int = 4
    feature_cache: Path | None = None


def run_training(spec: JobSpec, checkpoint: Path, manifest: Path, out_head: Path,
                 out_curve: Path | None = None, out_plot: Path | None = None,
                 evaluation: Evaluation | None = None) -> None:
    """Train the task head; write ``out_head`` (safetensors), ``out_curve`` (CSV) and ``out_plot``
    (the curve as PNG, also an MLflow artifact) atomically when done; then, with ``evaluation``,
    score the trained model on the validation split (:func:`evaluate`) in the same process and run.

    A job whose state file is at its last step (its outputs deleted, a forced rerun) trains no
    step: it writes the head from that state and evaluates it again.
    Under torchrun every rank trains its share of each batch and scores its share of the
    validation set; rank 0 alone tracks the run and writes files.
    """
    device, rank = start_distributed(spec.device)
    with job_lock(out_head.parent, "training", hold=rank == 0):  # never beside an orphan of a killed run
        _train(spec, checkpoint, manifest, out_head, out_curve, out_plot, evaluation, device, rank)


def _train(spec: JobSpec, checkpoint: Path, manifest: Path, out_head: Path, out_curve: Path | None,
           out_plot: Path | None, evaluation: Evaluation | None, device: torch.device, rank: int) -> None:
    job = prepare_job(spec, checkpoint, manifest, device)
    task, model, train_set = job.task, job.model, job.train_set
    cfg = spec.config(TrainConfig, "train")
    run_dir = out_head.parent
    fingerprint = job_fingerprint(spec, checkpoint)
    if rank != 0:
        train(model, train_set, task.collate, task.loss, cfg, run_dir, seed=spec.seed, fingerprint=fingerprint,
              device=device)
        if evaluation is not None:
            evaluate(job, spec, checkpoint, manifest, evaluation, None, cfg.steps, rank)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    state_file = run_dir / "mlflow_run_id"  # "<fingerprint> <run id>": a resumed job continues its run
    saved = state_file.read_text().split() if state_file.exists() else []
    resume_id = saved[1] if len(saved) == 2 and saved[0] == fingerprint else None
    name = spec_run_name(spec)
    counts = parameter_counts(model)
    trainable = counts["trainable_params"]
    params = {**flatten("", spec.task_config), "backbone": spec.backbone, "mode": spec.mode,
              "seed": spec.seed, **counts, "total_params": sum(p.numel() for p in model.parameters())}
    tags = job_tags(spec, checkpoint, manifest, "train" if evaluation is None else "train+evaluate")
    with tracked_run(resolve_uri(spec.tracking.get("uri")), spec.study, name, tags, params, resume_run_id=resume_id,
                     parent=spec.table) as run:
        if run.run_id is not None:
            write_text_atomic(state_file, f"{fingerprint} {run.run_id}\n")
        resolved = {k: v for k, v in json.loads(spec.to_json()).items() if k != "tracking"}
        run.log_dict(resolved, "config.json")  # the resolved job config
        start = time.monotonic()
        result = train(model, train_set, task.collate, task.loss, cfg, run_dir, seed=spec.seed,
                       fingerprint=fingerprint, logger=run, device=device)
        if result["start"] < result["step"]:  # a rerun of a finished job trains nothing and keeps its time
            run.log_metrics({"train/seconds": time.monotonic() - start}, result["step"])
        state = {k: v.detach().cpu().contiguous() for k, v in trainable_state_dict(model).items()}
        # serialised in memory, then written: a failed write (a full disk) is an OSError naming the file
        meta = {"fingerprint": fingerprint, "mlflow_run_id": run.run_id or "", "steps": str(result["step"])}
        write_bytes_atomic(out_head, save(state, metadata=meta))
        if out_curve is not None:
            write_curve(result["curve"], out_curve)
        if out_plot is not None:
            from frozenrep.pictures import plot_curve

            run.log_artifact(plot_curve(result["curve"], out_plot, f"{name}: training curve"), "plots")
        log.info("%s: %d steps, final loss %.4f, %d trainable parameters -> %s", name, result["step"],
                 result["losses"].get("loss", float("nan")), trainable, out_head)
        if evaluation is not None:
            evaluate(job, spec, checkpoint, manifest, evaluation, run, result["step"], rank)


def write_curve(curve: list[dict[str, float]], out: Path) -> None:
    """The training curve as CSV, one row per logged step (``step``, ``loss``, loss terms, ``lr``)."""
    import pandas as pd

    frame = pd.DataFrame(curve).rename(columns=lambda c: c.removeprefix("train/"))
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)


def attach_feature_cache(model: torch.nn.Module, checkpoint: Path, root: Path | None) -> list[FeatureCache]:
    """Give every frozen backbone in ``model`` a feature cache under ``root`` (keyed by the checkpoint),
    keeping only the levels the head reads where it says so (``model.backbone_levels``)."""
    caches = []
    levels = getattr(model, "backbone_levels", None)
    for module in model.modules():
        if isinstance(module, BackboneAdapter) and module.frozen:
            cache = FeatureCache(checkpoint_sha256(checkpoint), root, levels)
            module.use_cache(cache)
            caches.append(cache)
    return caches


def evaluate(job: Job, spec: JobSpec, checkpoint: Path, manifest: Path, outputs: Evaluation,
             run: RunLogger | None, step: int, rank: int) -> None:
    """Score the job's trained model on the validation split; write ``outputs.metrics`` (JSON)
    atomically, and the prediction pictures, and log both on ``run`` at ``step``.

    Under torchrun every rank scores its share of the validation set and the metric is computed
    over the pooled predictions; rank 0 (``run`` given) alone tracks and writes files (its
    feature-cache counts are its own share's).
    """
    task, model, train_set, val_set = job.task, job.model, job.train_set, job.val_set
    caches = (attach_feature_cache(model, checkpoint, outputs.feature_cache)
              if outputs.feature_cache and spec.mode == "frozen" else [])
    if rank != 0:
        task.evaluate(model, val_set, spec.task_config, job.device)
        return
    name = spec_run_name(spec)
    start = time.monotonic()
    metrics, predictions = task.evaluate(model, val_set, spec.task_config, job.device)
    seconds = time.monotonic() - start
    scalars = {f"{spec.task}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    skipped = [{"split": split, "file": f, "reason": r} for split, ds in (("train", train_set), ("val", val_set))
               for f, r in getattr(ds, "skipped", [])]
    scalars[f"{spec.task}/skipped_samples"] = len(skipped)
    run.log_metrics(scalars, step)
    record = {"task": spec.task, "backbone": spec.backbone, "pretraining": spec.entry.pretraining,
              "mode": spec.mode, "seed": spec.seed, "rung": spec.rung,
              **parameter_counts(model), "metrics": metrics,
              "table_metrics": list(task.table_metrics), "num_images": len(val_set),
              "skipped_samples": skipped,
              "eval_seconds": round(seconds, 2),
              "feature_cache": ({"hits": sum(c.hits for c in caches), "misses": sum(c.misses for c in caches)}
                                if caches else None), "checkpoint_sha256": checkpoint_sha256(checkpoint),
              "data_sha256": file_digest(manifest), "mlflow_run_id": run.run_id}
    if outputs.pictures is not None:
        with atomic_dir(outputs.pictures) as tmp:
            task.pictures(model, val_set, spec.task_config, job.device, predictions, tmp, outputs.num_pictures)
        for path in sorted(outputs.pictures.iterdir()):
            run.log_artifact(path, "predictions")
    write_json_atomic(outputs.metrics, record)
    run.log_artifact(outputs.metrics)
    log.info("%s: %s", name, ", ".join(f"{k}={v:.2f}" for k, v in metrics.items() if isinstance(v, (int, float))))
    if skipped:
        log.warning("%s: %d bad sample(s) skipped (listed in %s)", name, len(skipped), outputs.metrics)
