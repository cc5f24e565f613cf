"""A registry entry on every head, at tiny sizes, before a long job: what works and what fails.

For each task and mode (frozen, fine-tuned) :func:`check_backbone` builds the task's head on the
entry's backbone as the training job does, trains one step through the project's training loop
on a few generated samples in the task's real format, evaluates the head on a few validation
samples through the task's own evaluation, and checks the frozen guarantee (the frozen backbone
bit-identical after the step, the fine-tuned one changed by it). Sizes and head settings are a
profile's (the CI profile by default); only the sample counts and the step count are cut.

    frozenrep-check-backbone vit-b16-mae              # the entry's checkpoint if fetched, else random weights
"""

from __future__ import annotations

import math
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from frozenrep.backbones import MODES, BackboneAdapter, build_backbone
from frozenrep.checkpoints import CheckpointEntry
from frozenrep.config import job_spec
from frozenrep.tasks import declaration, get_task

SAMPLES = 2  # training and validation samples generated per task


@dataclass
class CheckResult:
    """One (task, mode): ``error`` is None when the head trained a step and evaluated."""

    task: str
    mode: str
    seconds: float = 0.0
    loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def line(self) -> str:
        head = f"{self.task:<7} {self.mode:<8} "
        if not self.ok:
            return head + f"FAILED  {self.error}"
        metrics = ", ".join(f"{k} {v:.3g}" for k, v in self.metrics.items())
        return head + f"ok      loss {self.loss:.4g}; {metrics} ({self.seconds:.1f} s)"


def generate_data(task: str, generate: dict[str, Any], root: Path) -> Path:
    """A few samples of the task's generated dataset (its real file format) under ``root``."""
    declaration(task).module("synthetic").generate(root, **{**generate, "num_train": SAMPLES, "num_val": SAMPLES})
    return root


def _backbone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value.detach().clone() for name, module in model.named_modules()
            if isinstance(module, BackboneAdapter) for key, value in module.state_dict().items()}


def check_one(entry: CheckpointEntry, checkpoint: Path | None, spec_cfg: dict[str, Any], task_name: str, mode: str,
              data_root: Path, run_dir: Path) -> tuple[CheckResult, torch.nn.Module | None]:
    """Train one step and evaluate the task's head in ``mode``; the result and the trained model."""
    from frozenrep.config import config_from
    from frozenrep.training import TrainConfig, train

    result = CheckResult(task_name, mode)
    start = time.monotonic()
    model = None
    try:
        task = get_task(task_name)
        train_set, val_set = task.datasets(data_root, spec_cfg)
        torch.manual_seed(0)
        model = task.build_head(build_backbone(entry, checkpoint, mode=mode), train_set, spec_cfg, entry)
        before = _backbone_state(model)
        train_cfg = {**spec_cfg["train"], "steps": 1, "batch_size": SAMPLES, "warmup_steps": 0,
                     "checkpoint_every": 1, "log_every": 1, "num_workers": 0}
        cfg = config_from(TrainConfig, train_cfg, "$defs.train", f"{task_name}.train")
        out = train(model, train_set, task.collate, task.loss, cfg, run_dir, seed=0, fingerprint="check",
                    device=torch.device("cpu"))
        result.loss = float(out["losses"]["loss"])
        if not math.isfinite(result.loss):
            raise RuntimeError(f"the training loss is {result.loss}")
        after = _backbone_state(model)
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        if mode == "frozen" and changed:
            raise RuntimeError(f"the frozen backbone changed in training: {changed[:3]}")
        if mode == "finetune" and not changed:
            raise RuntimeError("the fine-tuned backbone did not change in a training step: no gradient reaches it")
        metrics, _ = task.evaluate(model, val_set, spec_cfg, torch.device("cpu"))
        result.metrics = {k: float(v) for k, v in metrics.items() if k in task.table_metrics}
        bad = [k for k, v in result.metrics.items() if not math.isfinite(v)]
        if bad or not result.metrics:
            raise RuntimeError(f"evaluation gave no finite {', '.join(bad or task.table_metrics)}")
    except Exception as err:  # noqa: BLE001 -- the check reports every failure and goes on
        frame = traceback.extract_tb(err.__traceback__)[-1]
        result.error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''} " \
                       f"({Path(frame.filename).name}:{frame.lineno})"
    result.seconds = time.monotonic() - start
    return result, model


def check_backbone(config: dict[str, Any], registry: dict[str, CheckpointEntry], name: str,
                   checkpoint: Path | None = None, tasks: list[str] | None = None, modes: list[str] | None = None,
                   workdir: Path | None = None) -> list[CheckResult]:
    """Every (task, mode) of registry entry ``name`` on the profile ``config``'s heads; see the module."""
    from frozenrep.progress import log

    if name not in registry:
        raise KeyError(f"no registry entry {name!r}; known: {', '.join(sorted(registry))}")
    entry = registry[name]
    results = []
    with tempfile.TemporaryDirectory(prefix="frozenrep-check-") as tmp:
        root = Path(workdir or tmp)
        for task_name in tasks or config["tasks"]:
            spec = job_spec(config, registry, task_name, name, "frozen", 0)
            data_root = generate_data(task_name, config["datasets"][task_name]["generate"], root / "data" / task_name)
            for mode in modes or list(MODES):
                result, _ = check_one(entry, checkpoint, spec.task_config, task_name, mode, data_root,
                                      root / "runs" / f"{task_name}-{mode}")
                log.info("%s %s", name, result.line())
                results.append(result)
    return results
