"""Backbones made on this machine for the embedded default (registered like any downloaded one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from frozenrep.checkpoints import CheckpointEntry, create_model
from frozenrep.io import atomic_path, file_digest, write_text_atomic
from frozenrep.progress import log


def create_local_backbone(entry: dict[str, Any] | CheckpointEntry, out: str | Path) -> str:
    """Write the entry's backbone weights to ``out`` (safetensors) and ``<out>.sha256``; return the hash.

    ``create.init: random`` is a seeded random initialisation (the ``none`` pretraining row).
    """
    if isinstance(entry, dict):
        entry = CheckpointEntry.from_dict(entry)
    recipe = entry.create or {}
    init = recipe.get("init", "random")
    if init != "random":
        raise ValueError(f"registry entry {entry.name}: create.init {init!r} is not supported; use random")
    torch.manual_seed(int(recipe.get("seed", 0)))
    model = create_model(entry)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    out = Path(out)
    with atomic_path(out) as tmp:
        # No metadata: safetensors writes its keys in hash order, which would make the bytes (and the
        # sha256 that the registry checks) differ from run to run.
        save_file(state, str(tmp))
    digest = file_digest(out)
    write_text_atomic(str(out) + ".sha256", f"{digest}  {out.name}\n")
    log.info("created %s (%s, %d parameters): sha256 %s", out, entry.arch,
             sum(v.numel() for v in state.values()), digest)
    return digest
