"""The shared frozen backbone: any timm ``features_only`` model as a multi-scale feature extractor.

Every task head sees only :class:`BackboneAdapter`'s ``names``, ``channels`` and ``strides``
(detectron2's ``output_shape()`` habit), never a particular architecture.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

import torch
from torch import nn

from frozenrep.checkpoints import CheckpointEntry, create_model, load_into_model
from frozenrep.feature_cache import FeatureCache

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

    def use_cache(self, cache: FeatureCache | None) -> None:
        """Read and write this frozen backbone's features through ``cache`` (None: stop).

        With ``cache.levels`` set, a forward returns only those levels (the ones the head reads).
        """
        if cache is not None and not self.frozen:
            raise ValueError("a feature cache needs a frozen backbone: fine-tuned features change every step")
        unknown = sorted(set(cache.levels or ()) - set(self.names)) if cache is not None else []
        if unknown:
            raise ValueError(f"feature cache levels {unknown} are not levels of this backbone; it has {self.names}")
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

    def _cached_features(self, images: torch.Tensor) -> tuple[list[str], list[torch.Tensor]]:
        names = [n for n in self.names if n in self.cache.levels] if self.cache.levels else self.names
        kept = [self.names.index(n) for n in names]

        def compute(batch: torch.Tensor) -> list[torch.Tensor]:
            feats = self._features(batch)
            return [feats[i] for i in kept]

        return names, self.cache.features(images, compute)

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        names = self.names
        if self._given is not None and images is self._given[0]:
            feats = self._given[1]
        elif self.frozen:
            with torch.no_grad():
                names, feats = self._cached_features(images) if self.cache else (names, self._features(images))
        else:
            feats = self._features(images)
        return OrderedDict(zip(names, feats))


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
