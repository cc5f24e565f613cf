"""The shared frozen backbone: any timm model as a multi-scale feature extractor for the heads.

Every task head reads levels at strides 4, 8, 16 and 32 through ``names``, ``channels`` and
``strides`` (detectron2's ``output_shape()`` habit), never a particular architecture:

* a hierarchical model (Swin, ConvNeXt, ResNet, RegNet, EfficientNet, ...) gives them from its own
  stages: for each stride the deepest level of ``feature_info`` at that reduction
  (:class:`BackboneAdapter` alone);
* a plain model (ViT, DeiT, DINOv2, MAE, CLIP, EVA: one resolution throughout) gives the last
  block's map, and :class:`SimpleFeaturePyramid` (ViTDet [Li22]) builds the four levels from it.
  The pyramid is part of the head: it trains when the backbone is frozen.

:func:`feature_levels` puts the pyramid on an adapter where it is needed; the heads call it.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from frozenrep.checkpoints import CheckpointEntry, create_model, load_into_model
from frozenrep.feature_cache import FeatureCache

Mode = Literal["frozen", "finetune"]
MODES: tuple[str, ...] = ("frozen", "finetune")
HEAD_STRIDES: tuple[int, ...] = (4, 8, 16, 32)  # the levels every head reads, finest first
PLAIN_STRIDE = 16  # a plain model's map is on the stride-16 grid of the input, whatever its patch size


class BackboneError(ValueError):
    """A model that cannot serve the heads; the message names the architecture and what it has."""


def head_levels(reductions: list[int], arch: str = "the model") -> list[int]:
    """Indices into ``feature_info`` of the levels the heads read: for a hierarchical model the
    deepest level at each of the strides 4, 8, 16 and 32; for a plain one (every level at one
    stride) its last block."""
    if len(set(reductions)) == 1:
        return [len(reductions) - 1]
    missing = [s for s in HEAD_STRIDES if s not in reductions]
    if missing:
        raise BackboneError(f"{arch} has feature levels at strides {reductions} (timm feature_info), none at "
                            f"{missing}; the heads need levels at strides {list(HEAD_STRIDES)}. Choose a model "
                            "with those stages, or a plain (single-stride) model, which gets a simple feature pyramid.")
    return [max(i for i, r in enumerate(reductions) if r == s) for s in HEAD_STRIDES]


class BackboneAdapter(nn.Module):
    """Wrap a timm ``features_only`` model; return ``OrderedDict[name, NCHW tensor]``.

    In ``frozen`` mode the weights never change: ``requires_grad`` is off, the module stays in
    ``eval()`` whatever ``train()`` is called with, and the forward runs under ``torch.no_grad()``
    so no activations are kept for it.

    A plain model (one level, see :func:`head_levels`) reports its map at stride 16: with a patch
    size other than 16 (DINOv2's 14) the image is resized by patch/16 before the patch embedding,
    so that the token grid is the stride-16 grid of the input the heads see (timm resamples the
    position embeddings, ``dynamic_img_size``); class and register tokens are dropped by timm's
    ``forward_intermediates``.
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
        self.plain = len(self.strides) == 1  # a plain model's last block (features_from_model)
        self.patch = self.strides[0] if self.plain else None
        if self.plain:
            self.strides, self.names = [PLAIN_STRIDE], ["plain"]
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
        if self.plain:
            grid = [-(-side // PLAIN_STRIDE) * self.patch for side in images.shape[-2:]]
            if grid != list(images.shape[-2:]):
                images = F.interpolate(images, size=grid, mode="bilinear", align_corners=False)
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

    def source_levels(self, names: list[str]) -> list[str]:
        """The backbone levels that the levels ``names`` are computed from: themselves."""
        return list(names)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (Li et al., ECCV 2022) on a plain backbone's stride-16 map:
    two deconvolutions to stride 4, one to stride 8, the map itself at 16, max-pooling to 32; the
    channels halve with each doubling of resolution (dim/4, dim/2, dim, dim). Each head's own neck
    (FPN, Mask2Former's pixel decoder, the video projection) follows, as ViTDet's per-level
    convolutions do.

    It exposes the adapter's interface (``names``, ``channels``, ``strides``); ``adapter`` is the
    backbone it reads, frozen or not, while the pyramid itself always trains. ``keep`` (level
    indices): build and return only those levels (a head that reads one level, the video head).
    """

    def __init__(self, adapter: BackboneAdapter, keep: list[int] | None = None) -> None:
        super().__init__()
        from timm.layers import LayerNorm2d

        if not adapter.plain:
            raise BackboneError(f"a simple feature pyramid reads one stride-{PLAIN_STRIDE} map; this backbone "
                                f"has levels at strides {adapter.strides}")
        self.adapter = adapter
        dim = adapter.channels[0]
        builders = [
            lambda: nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), LayerNorm2d(dim // 2), nn.GELU(),
                                  nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2)),
            lambda: nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
            nn.Identity,
            lambda: nn.MaxPool2d(2, stride=2),
        ]
        self.channels: list[int] = [dim // 4, dim // 2, dim, dim]
        self.strides: list[int] = list(HEAD_STRIDES)
        self.names: list[str] = [f"stage{i + 1}" for i in range(len(self.channels))]
        self.kept = sorted({i % len(self.names) for i in keep}) if keep is not None else list(range(len(self.names)))
        self.scales = nn.ModuleDict({self.names[i]: builders[i]() for i in self.kept})

    output_shape = BackboneAdapter.output_shape

    def source_levels(self, names: list[str]) -> list[str]:
        """Every level is computed from the adapter's one map."""
        return list(self.adapter.names)

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        (top,) = self.adapter(images).values()
        return OrderedDict((name, scale(top)) for name, scale in self.scales.items())


Levels = BackboneAdapter | SimpleFeaturePyramid  # what a head reads its levels from


def feature_levels(adapter: BackboneAdapter, keep: list[int] | None = None) -> Levels:
    """What the heads read on ``adapter``: the adapter itself, or a simple feature pyramid on a plain one
    (of the levels ``keep`` only, when given)."""
    return SimpleFeaturePyramid(adapter, keep) if adapter.plain else adapter


def adapter_in(levels: Levels) -> BackboneAdapter:
    """The backbone adapter under a head's levels (the module a feature cache or shared pass feeds)."""
    return levels.adapter if isinstance(levels, SimpleFeaturePyramid) else levels


def features_from_model(model: nn.Module, arch: str = "the model") -> nn.Module:
    """The timm feature extractor of a built model, returning the levels of :func:`head_levels`.

    A plain model goes through timm's ``FeatureGetterNet`` (its ``forward_intermediates``: NCHW
    maps, prefix tokens dropped, later blocks and the classifier pruned). A hierarchical one
    through ``FeatureListNet`` on its stage modules: the modules are found where ``feature_info``
    names them (``layer1`` of a ResNet is a child of the model, ``layers.0`` of a Swin a child of
    a Sequential, which is then flattened); models whose stages lie deeper use the getter too.
    """
    from timm.models._features import FeatureGetterNet, FeatureListNet

    info = model.feature_info if isinstance(model.feature_info, list) else model.feature_info.info
    indices = head_levels([level["reduction"] for level in info], arch)
    if len(indices) == 1:
        return FeatureGetterNet(model, out_indices=indices, output_fmt="NCHW")
    modules = [info[i]["module"] for i in indices]
    children = dict(model.named_children())
    flatten = any("." in name for name in modules)

    def listable(name: str) -> bool:  # a child, or a child of a Sequential child
        parent, _, rest = name.partition(".")
        return parent in children and (not rest or ("." not in rest and isinstance(children[parent], nn.Sequential)))

    if all(listable(name) for name in modules):
        fmt = getattr(model, "output_fmt", "NCHW")
        return FeatureListNet(model, out_indices=indices, output_fmt=getattr(fmt, "value", fmt),
                              flatten_sequential=flatten)
    if not hasattr(model, "forward_intermediates"):
        raise BackboneError(f"{arch}: its feature modules {modules} are not children of the model and it has no "
                            "forward_intermediates; timm cannot extract its features")
    return FeatureGetterNet(model, out_indices=indices, output_fmt="NCHW")


def build_backbone(entry: CheckpointEntry, checkpoint: str | Path | None, mode: Mode = "frozen") -> BackboneAdapter:
    """The registry entry's backbone with its checkpoint loaded strictly (random weights if None)."""
    model = load_into_model(entry, checkpoint) if checkpoint is not None else create_model(entry)
    return BackboneAdapter(features_from_model(model, entry.arch), mode=mode)


def frozen_prefixes(model: nn.Module) -> list[str]:
    """State-dict prefixes of every frozen backbone inside ``model`` (their weights are not saved)."""
    return [f"{name}." if name else "" for name, module in model.named_modules()
            if isinstance(module, BackboneAdapter) and module.frozen]


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without the frozen backbone: what training changes."""
    prefixes = frozen_prefixes(model)
    return {k: v for k, v in model.state_dict().items() if not any(k.startswith(p) for p in prefixes)}
