"""Backbones made on this machine for the embedded default (registered like any downloaded one).

A registry entry's ``create`` block says how: ``init: random`` (the ``none`` row), or a
pretraining recipe of :mod:`frozenrep.pretraining` (``supervised``, ``simmim``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from frozenrep.checkpoints import CheckpointEntry, create_model
from frozenrep.io import file_digest, write_bytes_atomic, write_text_atomic
from frozenrep.progress import log


def pretrain(entry: CheckpointEntry, state_dir: Path, tracking: dict[str, Any] | None = None,
             study: str = "pretraining", device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Run the entry's pretraining recipe (resumable from ``state_dir``); return the backbone's weights."""
    from frozenrep.config import config_from
    from frozenrep.io import fingerprint_of
    from frozenrep.pretraining import Recipe, build_pretrainer, classification_accuracy, simmim_loss, supervised_loss
    from frozenrep.synthetic.images import LabelledImages, collate
    from frozenrep.tracking import flatten, resolve_uri, run_name, tracked_run
    from frozenrep.training import TrainConfig, train

    recipe = Recipe.of(entry)
    cfg = config_from(TrainConfig, recipe.train, "$defs.train", f"registry entry {entry.name}: create.train")
    dataset = LabelledImages(recipe.images, *entry.normalisation()).materialise()
    torch.manual_seed(recipe.seed)
    model = build_pretrainer(entry, recipe)
    loss_fn = supervised_loss if recipe.init == "supervised" else simmim_loss
    fingerprint = fingerprint_of(entry.__dict__)
    # mode "full": every weight trains (there is no frozen part in pretraining)
    tags = {"task": "pretrain", "backbone": entry.name, "pretraining": recipe.init, "mode": "full",
            "seed": recipe.seed, "job": "pretrain", "arch": entry.arch}
    params = {**flatten("", entry.create), "arch": entry.arch}
    name = run_name("pretrain", entry.name, "full", recipe.seed)
    with tracked_run(resolve_uri((tracking or {}).get("uri")), study, name, tags, params) as run:
        start = time.monotonic()
        result = train(model, dataset, collate, loss_fn, cfg, state_dir, seed=recipe.seed, fingerprint=fingerprint,
                       logger=run, device=device)
        summary = {"pretrain/seconds": time.monotonic() - start, **{f"pretrain/{k}": v for k, v in result["losses"].items()}}
        if recipe.init == "supervised":
            summary["pretrain/heldout_top1"] = classification_accuracy(model, dataset)
            if recipe.heldout_classes:  # the held-out task a smaller set's backbone is scored on
                summary[f"pretrain/heldout_top1_first{recipe.heldout_classes}"] = classification_accuracy(
                    model, dataset, classes=recipe.heldout_classes)
        run.log_metrics(summary, result["step"])
    log.info("pretrained %s (%s, %d steps): %s", entry.name, recipe.init, result["step"],
             ", ".join(f"{k.split('/')[1]} {v:.4g}" for k, v in summary.items()))
    return {k: v.detach().cpu().contiguous() for k, v in model.backbone_state_dict().items()}


def create_local_backbone(entry: dict[str, Any] | CheckpointEntry, out: str | Path,
                          tracking: dict[str, Any] | None = None, study: str = "pretraining") -> str:
    """Write the entry's backbone weights to ``out`` (safetensors) and ``<out>.sha256``; return the hash.

    ``create.init: random`` is a seeded random initialisation; ``supervised`` and ``simmim``
    pretrain first (their resumable state lives in ``<out stem>.pretrain/`` beside ``out``).
    """
    from frozenrep.pretraining import Recipe

    if isinstance(entry, dict):
        entry = CheckpointEntry.from_dict(entry)
    recipe = Recipe.of(entry)
    out = Path(out)
    if recipe.init == "random":
        torch.manual_seed(recipe.seed)
        model = create_model(entry)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    else:
        torch.manual_seed(recipe.seed)
        state = pretrain(entry, out.with_name(out.name.split(".")[0] + ".pretrain"), tracking, study)
    # No metadata: safetensors writes its keys in hash order, which would make the bytes (and the
    # sha256 that the registry checks) differ from run to run.
    write_bytes_atomic(out, save(state))
    digest = file_digest(out)
    write_text_atomic(str(out) + ".sha256", f"{digest}  {out.name}\n")
    log.info("created %s (%s, %s, %d parameters): sha256 %s", out, entry.arch, recipe.init,
             sum(v.numel() for v in state.values()), digest)
    return digest
