"""Pretraining the embedded default's tiny backbones on a generated labelled image set.

Two recipes, both on the registry entry's own timm architecture, both through the one training
loop (:func:`frozenrep.training.train`, so a killed pretraining job resumes too):

* ``supervised``: image classification (cross-entropy through the model's own pooling and
  classifier, timm's ``reset_classifier``) over the shape-and-texture classes of
  :mod:`frozenrep.synthetic.images`; any timm family (Swin, ConvNeXt, ResNet, ViT, ...). A larger
  set (more images and more classes) mirrors ImageNet-22K against ImageNet-1K.
* ``simmim``: masked image modelling as in SimMIM (Xie et al., CVPR 2022), for Swin and plain
  ViTs as in the paper: random masking of ``mask_patch_size`` squares after the patch embedding (a
  learnable mask token replaces them; a ViT's position embeddings are added after), a linear
  decoder (1x1 convolution + pixel shuffle back to full resolution) regressing the raw pixels, and
  an L1 loss over the masked pixels only. No labels are used. CNNs are not covered (masking a
  convolution needs sparse convolutions, as in SparK).

Only the backbone (no classifier, no decoder) is written out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frozenrep.checkpoints import CheckpointEntry, create_model
from frozenrep.synthetic.images import ImageSetConfig, LabelledImages, PretrainingError, collate

RECIPES = ("random", "supervised", "simmim")


def encoder_weights(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """A timm model's weights without its classifier (timm's ``get_classifier``: ``head``,
    ``head.fc``, ``fc``, ...), the keys of the same architecture built with ``num_classes=0``."""
    classifier = {id(p) for p in encoder.get_classifier().parameters()}
    return {k: v for k, v in encoder.state_dict(keep_vars=True).items() if id(v) not in classifier}


class Classifier(nn.Module):
    """The timm backbone with a linear classifier on its globally pooled last stage."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder.reset_classifier(num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights without the classifier (what the registry's checkpoint holds)."""
        return encoder_weights(self.encoder)


class SimMIM(nn.Module):
    """SimMIM around a timm Swin or plain ViT: mask token after the patch embedding, linear pixel
    decoder, L1 on masked pixels."""

    def __init__(self, encoder: nn.Module, mask_patch_size: int = 16, mask_ratio: float = 0.6) -> None:
        super().__init__()
        # a plain ViT: position embedding and prefix tokens (timm's _pos_embed), then blocks
        self.plain = all(hasattr(encoder, attr) for attr in ("patch_embed", "_pos_embed", "blocks", "norm"))
        if not self.plain and not all(hasattr(encoder, attr) for attr in ("patch_embed", "layers", "norm")):
            raise PretrainingError(f"SimMIM needs a Swin-style or plain ViT timm model, not {type(encoder).__name__} "
                                   "(a CNN has no patch tokens to mask); pretrain it with init: supervised")
        self.encoder = encoder
        self.patch_size = int(encoder.patch_embed.patch_size[0])
        self.stride = int(encoder.feature_info[-1]["reduction"])
        if mask_patch_size % self.patch_size:
            raise PretrainingError(f"mask_patch_size {mask_patch_size} must be a multiple of the patch size {self.patch_size}")
        if not 0 < mask_ratio < 1:
            raise PretrainingError(f"mask_ratio must be between 0 and 1, got {mask_ratio}")
        self.mask_patch_size, self.mask_ratio = mask_patch_size, mask_ratio
        embed_dim = int(encoder.embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Sequential(nn.Conv2d(encoder.num_features, self.stride ** 2 * 3, kernel_size=1),
                                     nn.PixelShuffle(self.stride))

    def random_mask(self, batch: int, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(batch, H/m, W/m)`` of 0/1: exactly ``round(ratio * cells)`` masked cells per image."""
        if height % self.mask_patch_size or width % self.mask_patch_size:
            raise PretrainingError(f"image size {height}x{width} is not a multiple of mask_patch_size {self.mask_patch_size}")
        gh, gw = height // self.mask_patch_size, width // self.mask_patch_size
        count = int(round(self.mask_ratio * gh * gw))
        order = torch.rand(batch, gh * gw, generator=generator).argsort(dim=1)
        mask = torch.zeros(batch, gh * gw)
        mask.scatter_(1, order[:, :count], 1.0)
        return mask.view(batch, gh, gw)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction and L1 loss over the masked pixels, averaged over pixels and channels."""
        tokens = self.encoder.patch_embed(images)  # B, H/p, W/p, C (timm Swin, and ViTs of dynamic size)
        if tokens.ndim == 3:  # a ViT of fixed size flattens its patch tokens
            tokens = tokens.unflatten(1, (images.shape[2] // self.patch_size, images.shape[3] // self.patch_size))
        scale = self.mask_patch_size // self.patch_size
        token_mask = mask.repeat_interleave(scale, 1).repeat_interleave(scale, 2).unsqueeze(-1).to(tokens.dtype)
        tokens = tokens * (1 - token_mask) + self.mask_token.to(tokens.dtype) * token_mask
        feats = self.encode(tokens)
        reconstruction = self.decoder(feats.permute(0, 3, 1, 2).contiguous())
        pixel_mask = mask.repeat_interleave(self.mask_patch_size, 1).repeat_interleave(self.mask_patch_size, 2)
        pixel_mask = pixel_mask.unsqueeze(1).to(images.dtype)
        loss = ((images - reconstruction).abs() * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / images.shape[1]
        return reconstruction, loss

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """The encoder after its patch embedding, on channels-last ``(B, h, w, C)`` tokens; the last
        stage's map, channels-last (a ViT's class and register tokens dropped)."""
        encoder = self.encoder
        if not self.plain:
            return encoder.norm(encoder.layers(tokens))
        grid = tokens.shape[1:3]
        x = encoder._pos_embed(tokens if encoder.dynamic_img_size else tokens.flatten(1, 2))
        x = encoder.norm(encoder.blocks(encoder.norm_pre(encoder.patch_drop(x))))
        return x[:, encoder.num_prefix_tokens:].unflatten(1, grid)

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights without mask token and decoder."""
        return encoder_weights(self.encoder)


@dataclass
class Recipe:
    """A registry entry's ``create`` block, checked."""

    init: str
    seed: int = 0
    images: ImageSetConfig | None = None
    train: dict[str, Any] = field(default_factory=dict)
    mask_patch_size: int = 16
    mask_ratio: float = 0.6
    heldout_classes: int | None = None  # supervised: held-out top-1 also over the first n classes only

    @classmethod
    def of(cls, entry: CheckpointEntry) -> "Recipe":
        create = dict(entry.create or {})
        where = f"registry entry {entry.name}: create"
        init = create.get("init", "random")
        if init not in RECIPES:
            raise PretrainingError(f"{where}.init {init!r} is not one of {', '.join(RECIPES)}")
        unknown = set(create) - {"init", "seed", "images", "train", "mask_patch_size", "mask_ratio", "heldout_classes"}
        if unknown:
            raise PretrainingError(f"{where} has unknown keys {sorted(unknown)}")
        if init != "random":
            for key in ("images", "train"):
                if key not in create:
                    raise PretrainingError(f"{where}.{key} is required for init {init}")
            try:
                create["images"] = ImageSetConfig(**create["images"])
            except (TypeError, PretrainingError) as err:
                raise PretrainingError(f"{where}.images: {err}") from err
        shared = create.get("heldout_classes")
        if shared is not None and (init != "supervised" or not 2 <= shared <= create["images"].num_classes):
            raise PretrainingError(f"{where}.heldout_classes ({shared}) needs init: supervised and a count between 2 "
                                   "and images.num_classes (the first classes, those a smaller set shares)")
        return cls(**create)


def build_pretrainer(entry: CheckpointEntry, recipe: Recipe) -> nn.Module:
    """The module the recipe trains: a classifier or a SimMIM model around the entry's architecture."""
    encoder = create_model(entry)
    if recipe.init == "supervised":
        return Classifier(encoder, recipe.images.num_classes)
    if recipe.init == "simmim":
        return SimMIM(encoder, recipe.mask_patch_size, recipe.mask_ratio)
    raise PretrainingError(f"registry entry {entry.name}: init {recipe.init} trains nothing")


def supervised_loss(model: Classifier, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    images, labels = batch
    return {"loss_cls": F.cross_entropy(model(images), labels)}


def simmim_loss(model: SimMIM, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    images, _ = batch  # labels are not used
    mask = model.random_mask(images.shape[0], images.shape[2], images.shape[3]).to(images.device)
    return {"loss_l1": model(images, mask)[1]}


@torch.no_grad()
def classification_accuracy(model: Classifier, dataset: LabelledImages, count: int = 512,
                            batch_size: int = 128, classes: int | None = None) -> float:
    """Top-1 on freshly drawn images of the same classes (another seed than the training set, so
    the same images for every set of the same seed and image size).

    ``classes``: only the first ``classes`` classes, the model choosing among those alone. A
    smaller set's classes are the first of a larger one's (:func:`class_catalogue`), so backbones
    pretrained on the two sets are scored on the same held-out task."""
    classes = classes or dataset.cfg.num_classes
    held_out = LabelledImages(ImageSetConfig(count, classes, dataset.cfg.image_size,
                                             dataset.cfg.seed + 1_000_003, dataset.cfg.draw_size),  # on scenes
                              tuple(dataset.mean.flatten().tolist()), tuple(dataset.std.flatten().tolist()))
    was_training = model.training
    model.eval()
    correct = 0
    device = next(model.parameters()).device
    for start in range(0, count, batch_size):
        images, labels = collate([held_out[k] for k in range(start, min(start + batch_size, count))])
        correct += int((model(images.to(device))[:, :classes].argmax(1).cpu() == labels).sum())
    model.train(was_training)
    return 100.0 * correct / count
