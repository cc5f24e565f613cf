"""The shared frozen backbone: any timm ``features_only`` model as a multi-scale feature extractor.

Every task head sees only :class:`BackboneAdapter`'s ``names``, ``channels`` and ``strides``
(detectron2's ``output_shape()`` habit), never a particular architecture.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np

import torch
from torch import nn

from frozenrep.checkpoints import CheckpointEntry, create_model, load_into_model
from frozenrep.io import atomic_path

Mode = Literal["frozen", "finetune"]
MODES: tuple[str, ...] = ("frozen", "finetune")


class BackboneAdapter(nn.Module):
    """Wrap a timm ``features_only`` model; return ``OrderedDict[name, NCHW tensor]``.

    In ``frozen`` mode the weights never change: ``requires_grad`` is off, the module stays in
    ``eval()`` whatever ``train()`` is called with, and the forward runs under ``torch.no_grad()``
    so no activations are kept for it.
    """

    def __init__(self, features: nn.Module, mode: Mode = "frozen") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        info = features.feature_info
        self.body = features
        self.mode = mode
        self.channels: list[int] = list(info.channels())
        self.strides: list[int] = list(info.reduction())
        self.names: list[str] = [f"stage{i + 1}" for i in range(len(self.channels))]
        fmt = getattr(features, "output_fmt", "NCHW")
        self._channels_last = getattr(fmt, "value", fmt) == "NHWC"
        self.cache: FeatureCache | None = None  # frozen mode only: see use_cache()
        self._given: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # see given_features()
        if self.frozen:
            self.body.requires_grad_(False)
            self.body.eval()

    @property
    def frozen(self) -> bool:
        return self.mode == "frozen"

    def train(self, mode: bool = True) -> "BackboneAdapter":
        return super().train(mode and not self.frozen)

    def output_shape(self) -> dict[str, tuple[int, int]]:
        """``{name: (channels, stride)}`` for every level, finest first."""
        return {n: (c, s) for n, c, s in zip(self.names, self.channels, self.strides)}

    def use_cache(self, cache: "FeatureCache | None") -> None:
        """Read and write this frozen backbone's features through ``cache`` (None: stop)."""
        if cache is not None and not self.frozen:
            raise ValueError("a feature cache needs a frozen backbone: fine-tuned features change every step")
        self.cache = cache

    @contextmanager
    def given_features(self, images: torch.Tensor, feats: list[torch.Tensor]) -> Iterator[None]:
        """Within the block, a forward on ``images`` (this very tensor) returns ``feats``, computed once
        elsewhere (:mod:`frozenrep.multitask`), instead of running the body again. Frozen mode only."""
        if not self.frozen:
            raise ValueError("given features need a frozen backbone: a fine-tuned one is not shared")
        self._given = (images, feats)
        try:
            yield
        finally:
            self._given = None

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(images)
        if self._channels_last:
            feats = [f.permute(0, 3, 1, 2).contiguous() for f in feats]
        return list(feats)

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if self._given is not None and images is self._given[0]:
            feats = self._given[1]
        elif self.frozen:
            with torch.no_grad():
                feats = self.cache.features(images, self._features) if self.cache else self._features(images)
        else:
            feats = self._features(images)
        return OrderedDict(zip(self.names, feats))


class FeatureCache:
    """A frozen backbone's features, computed once per input and reused on later passes.

    Each sample of a batch is keyed by ``namespace`` (the checkpoint's sha256: other weights, other
    features) and the sha256 of the sample's own bytes, shape and dtype: the input as the backbone
    sees it, after resizing, cropping, normalisation and padding. Another transform gives another
    key, so a hit is always the right features; under continuous augmentation (random resizing)
    there are simply no hits, and the cache should be left off there.

    On disk (``root`` given) each key is one file (a JSON header of each level's dtype and shape,
    then the raw levels), written to a temporary file and renamed into place (parallel jobs may
    share the cache; the last identical write wins), read memory-mapped. Features
    are stored in their own precision, float32 on the CPU and bf16 (as raw 16-bit) under CUDA
    autocast, so a cached pass gives the same head outputs, bit for bit, as an uncached one.
    Without ``root`` the features stay in memory, on the CPU, for the life of the object.
    A backbone's samples must not influence each other (true in eval mode: no batch statistics).
    """

    def __init__(self, namespace: str, root: str | Path | None = None) -> None:
        if not namespace:
            raise ValueError("a feature cache needs a namespace (the checkpoint's sha256)")
        self.namespace = namespace
        self.root = Path(root) / namespace[:16] if root is not None else None
        self.memory: dict[str, list[torch.Tensor]] = {}
        self.hits = self.misses = 0

    def key(self, sample: torch.Tensor) -> str:
        """The sample's key (pass a CPU tensor: a device tensor is copied to the host first)."""
        data = sample.detach().cpu().contiguous()
        raw = data.view(torch.int16) if data.dtype == torch.bfloat16 else data
        digest = hashlib.sha256(f"{self.namespace}|{tuple(data.shape)}|{data.dtype}|".encode())
        digest.update(memoryview(raw.numpy()).cast("B"))
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.feat"

    def _load(self, key: str) -> list[torch.Tensor] | None:
        if self.root is None:
            return self.memory.get(key)
        path = self._path(key)
        if not path.exists():
            return None
        blob = np.memmap(path, dtype=np.uint8, mode="r")
        size = int.from_bytes(bytes(blob[:8]), "little")
        offset, feats = 8 + size, []
        for dtype, shape in json.loads(bytes(blob[8:8 + size])):
            raw_dtype = np.int16 if dtype == "bfloat16" else np.dtype(dtype)
            count = int(np.prod(shape))
            array = torch.from_numpy(np.frombuffer(blob, raw_dtype, count, offset).copy()).view(*shape)
            feats.append(array.view(torch.bfloat16) if dtype == "bfloat16" else array)
            offset += count * np.dtype(raw_dtype).itemsize
        return feats

    def _store(self, key: str, feats: list[torch.Tensor]) -> None:
        feats = [f.detach().cpu().contiguous() for f in feats]
        if self.root is None:
            self.memory[key] = feats
            return
        header, chunks = [], []
        for f in feats:
            header.append([str(f.dtype).removeprefix("torch."), list(f.shape)])
            chunks.append((f.view(torch.int16) if f.dtype == torch.bfloat16 else f).numpy().tobytes())
        head = json.dumps(header).encode()
        path = self._path(key)
        # One file per key: an 8-byte header length, a JSON header of (dtype, shape) per level, the raw levels.
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as out:
                out.write(len(head).to_bytes(8, "little") + head)
                for chunk in chunks:
                    out.write(chunk)

    def features(self, images: torch.Tensor,
                 compute: Callable[[torch.Tensor], list[torch.Tensor]]) -> list[torch.Tensor]:
        """The batch's features per level: cached samples loaded, the others computed together."""
        host = images.detach().cpu()  # one device-to-host copy per batch, not one per sample
        keys = [self.key(x) for x in host]
        found = [self._load(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = compute(images[missing] if len(missing) < len(keys) else images)
            on_host = [level.detach().cpu() for level in computed]  # likewise, one copy per level
            for j, i in enumerate(missing):
                found[i] = [level[j] for level in on_host]
                self._store(keys[i], found[i])
            if len(missing) == len(keys):
                return computed
        return [torch.stack([f[level].to(images.device) for f in found]) for level in range(len(found[0]))]


def features_from_model(model: nn.Module, out_indices: tuple[int, ...] | None = None) -> nn.Module:
    """Turn a built timm model into its ``features_only`` form (what ``create_model(features_only=True)`` builds)."""
    from timm.models import FeatureListNet

    if out_indices is None:
        out_indices = tuple(range(len(model.feature_info)))
    fmt = getattr(model, "output_fmt", "NCHW")
    return FeatureListNet(model, out_indices=out_indices, output_fmt=getattr(fmt, "value", fmt),
                          flatten_sequential=True)


def build_backbone(entry: CheckpointEntry, checkpoint: str | Path | None, mode: Mode = "frozen",
                   out_indices: tuple[int, ...] | None = None) -> BackboneAdapter:
    """The registry entry's backbone with its checkpoint loaded strictly (random weights if None)."""
    model = load_into_model(entry, checkpoint) if checkpoint is not None else create_model(entry)
    return BackboneAdapter(features_from_model(model, out_indices), mode=mode)


def frozen_prefixes(model: nn.Module) -> list[str]:
    """State-dict prefixes of every frozen backbone inside ``model`` (their weights are not saved)."""
    return [f"{name}." if name else "" for name, module in model.named_modules()
            if isinstance(module, BackboneAdapter) and module.frozen]


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without the frozen backbone: what training changes."""
    prefixes = frozen_prefixes(model)
    return {k: v for k, v in model.state_dict().items() if not any(k.startswith(p) for p in prefixes)}
