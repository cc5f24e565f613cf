"""Semantic segmentation: Hugging Face Mask2Former with the shared backbone adapter as its encoder.

transformers' ``Mask2FormerForUniversalSegmentation`` is built from a config; its pixel-level
encoder is replaced by :class:`AdapterEncoder` (the only contract: return an object with
``feature_maps`` and expose ``channels``) and its pixel decoder is rebuilt for those channels.
Nothing is loaded from a hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from frozenrep.backbones import BackboneAdapter, Levels, feature_levels
from frozenrep.randomness import current_batch_seeds, sample_rng

IGNORE_INDEX = 255


def per_sample_criterion(config: Any, weight_dict: dict[str, float]) -> nn.Module:
    """transformers' Mask2Former loss, with its random point sampling drawn per training image.

    The matcher samples points per image and the mask losses sample points per matched mask, both
    from the process-wide generator; here each image draws from its own seed
    (:mod:`frozenrep.randomness`), and the mask count that normalises the mask losses is averaged
    over the data-parallel ranks, as Mask2Former's own criterion does. So two processes with half a
    batch each compute the losses of one process with the whole batch. Without published seeds (and
    in one process) it is transformers' loss unchanged.
    """
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerHungarianMatcher, Mask2FormerLoss

    class PerSampleMatcher(Mask2FormerHungarianMatcher):
        def forward(self, masks_queries_logits, class_queries_logits, mask_labels, class_labels):
            seeds = current_batch_seeds(masks_queries_logits.shape[0])
            if seeds is None:
                return super().forward(masks_queries_logits, class_queries_logits, mask_labels, class_labels)
            self.draws += 1  # one draw per call: the last layer's matching, then each auxiliary layer's
            indices = []
            for i, seed in enumerate(seeds):
                with sample_rng(seed, self.draws, masks_queries_logits.device):
                    indices += super().forward(masks_queries_logits[i:i + 1], class_queries_logits[i:i + 1],
                                               mask_labels[i:i + 1], class_labels[i:i + 1])
            return indices

    class PerSampleLoss(Mask2FormerLoss):
        in_step = False

        def forward(self, *args, **kwargs):
            if self.in_step:  # the auxiliary layers' losses: transformers recurses into forward
                return super().forward(*args, **kwargs)
            self.draws = self.matcher.draws = 0  # draws are counted from the start of every step
            self.in_step = True
            try:
                return super().forward(*args, **kwargs)
            finally:
                self.in_step = False

        def loss_masks(self, masks_queries_logits, mask_labels, indices, num_masks):
            self.matched_per_image = [len(src) for src, _ in indices]  # the matched masks come image by image
            return super().loss_masks(masks_queries_logits, mask_labels, indices, num_masks)

        def sample_points_using_uncertainty(self, logits, uncertainty_function, num_points, oversample_ratio,
                                            importance_sample_ratio):
            seeds = current_batch_seeds(len(self.matched_per_image))
            if seeds is None:
                return super().sample_points_using_uncertainty(logits, uncertainty_function, num_points,
                                                               oversample_ratio, importance_sample_ratio)
            self.draws += 1
            points = []
            for seed, chunk in zip(seeds, torch.split(logits, self.matched_per_image)):
                with sample_rng(seed, 1_000 + self.draws, logits.device):
                    points.append(super().sample_points_using_uncertainty(
                        chunk, uncertainty_function, num_points, oversample_ratio, importance_sample_ratio))
            return torch.cat(points)

        def loss_labels(self, class_queries_logits, class_labels, indices):
            """transformers' class loss is a mean weighted per query (``no_object_weight`` for unmatched
            ones), so its normaliser depends on the rank's images; rescaled to the global normaliser."""
            from frozenrep.runtime import distributed, global_normaliser_scale

            losses = super().loss_labels(class_queries_logits, class_labels, indices)
            if distributed()[1] > 1:
                queries = class_queries_logits.shape[1]
                matched = float(sum(len(src) for src, _ in indices))
                local = torch.as_tensor(matched + (len(indices) * queries - matched) * self.eos_coef,
                                        device=class_queries_logits.device)
                scale = global_normaliser_scale(local)
                losses = {k: v * scale for k, v in losses.items()}
            return losses

        def get_num_masks(self, class_labels, device):
            import torch.distributed as dist

            from frozenrep.runtime import distributed

            count = torch.as_tensor(float(sum(len(c) for c in class_labels)), device=device)
            _, world = distributed()
            if world > 1:
                dist.all_reduce(count)
            return torch.clamp(count / world, min=1)

    criterion = PerSampleLoss(config=config, weight_dict=weight_dict)
    matcher = criterion.matcher
    criterion.matcher = PerSampleMatcher(cost_class=matcher.cost_class, cost_mask=matcher.cost_mask,
                                         cost_dice=matcher.cost_dice, num_points=matcher.num_points)
    return criterion


@dataclass
class SegmentationHeadConfig:
    """Mask2Former settings: the keys of ``ade20k.head`` (defaults in the profile schema)."""

    pixel_decoder_layers: int  # [Lin22] one-block pixel decoder (Mask2Former's own default is 6)
    transformer_decoder_layers: int  # [Lin22] four-block transformer decoder (Mask2Former: 9)
    num_queries: int
    hidden_dim: int
    feature_levels: int  # multi-scale levels the transformer decoder attends to
    num_heads: int
    feedforward_dim: int
    train_num_points: int  # points sampled per mask for the mask losses
    no_object_weight: float
    class_weight: float
    mask_weight: float
    dice_weight: float


class AdapterEncoder(nn.Module):
    """The backbone's levels in the shape Mask2Former's pixel-level module expects."""

    def __init__(self, adapter: Levels) -> None:
        super().__init__()
        self.adapter = adapter
        self.channels = list(adapter.channels)

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(feature_maps=tuple(self.adapter(pixel_values).values()))


def mask_targets(labels: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mask2Former's targets of label maps (B, H, W): per image, one binary mask per class present
    (``IGNORE_INDEX`` left out) and those classes, ascending.

    The classes of the whole batch are found in one ``unique`` over (image, class) keys and read
    back once: on a GPU each read makes the host wait for the device.
    """
    stride = 1 << 32
    keys = labels.flatten(1).long() + torch.arange(len(labels), device=labels.device)[:, None] * stride
    per_image: list[list[int]] = [[] for _ in labels]
    for key in torch.unique(keys).tolist():
        if key % stride != IGNORE_INDEX:
            per_image[key // stride].append(key % stride)
    mask_labels, class_labels = [], []
    for label, classes in zip(labels, per_image):
        class_labels.append(torch.tensor(classes, dtype=torch.long, device=label.device))
        mask_labels.append(torch.stack([(label == c) for c in classes]).float() if classes
                           else label.new_zeros((0, *label.shape), dtype=torch.float))
    return mask_labels, class_labels


class Mask2FormerSegmenter(nn.Module):
    """Normalises images, runs Mask2Former, and turns its queries into per-pixel class scores."""

    def __init__(self, backbone: BackboneAdapter, num_classes: int, head: SegmentationHeadConfig,
                 image_mean: Sequence[float], image_std: Sequence[float]) -> None:
        super().__init__()
        from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
        from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoder

        backbone = feature_levels(backbone)
        if head.feature_levels > len(backbone.channels) - 1:
            raise ValueError(f"ade20k.head.feature_levels is {head.feature_levels}, but the backbone has only "
                             f"{len(backbone.channels)} levels (one is kept for the mask features).")
        # A one-stage placeholder backbone keeps construction cheap; it is replaced right below.
        placeholder = SwinConfig(embed_dim=8, depths=[1], num_heads=[1], out_features=["stage1"])
        self.config = Mask2FormerConfig(
            backbone_config=placeholder, num_labels=num_classes, num_queries=head.num_queries,
            hidden_dim=head.hidden_dim, feature_size=head.hidden_dim, mask_feature_size=head.hidden_dim,
            # transformers counts the prediction from the learnable queries as a layer (Mask2Former's
            # DEC_LAYERS: 10 means 9 blocks), hence the + 1 for the number of real decoder blocks.
            encoder_layers=head.pixel_decoder_layers, decoder_layers=head.transformer_decoder_layers + 1,
            num_attention_heads=head.num_heads, encoder_feedforward_dim=head.feedforward_dim,
            dim_feedforward=head.feedforward_dim, common_stride=backbone.strides[0],
            feature_strides=list(backbone.strides), train_num_points=head.train_num_points,
            no_object_weight=head.no_object_weight, class_weight=head.class_weight,
            mask_weight=head.mask_weight, dice_weight=head.dice_weight, num_feature_levels=head.feature_levels,
            use_auxiliary_loss=True, ignore_value=IGNORE_INDEX,
        )
        self.model = Mask2FormerForUniversalSegmentation(self.config)
        pixel_level = self.model.model.pixel_level_module
        pixel_level.encoder = AdapterEncoder(backbone)
        pixel_level.decoder = Mask2FormerPixelDecoder(self.config, feature_channels=backbone.channels)
        # transformers initialises weights in post_init(), which already ran; initialise the new decoder the
        # same way (its level_embed is allocated uninitialised), without touching the loaded backbone.
        pixel_level.decoder.apply(self.model._init_weights)
        self.model.criterion = per_sample_criterion(self.config, self.model.weight_dict)
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std).view(1, 3, 1, 1), persistent=False)

    @property
    def backbone(self) -> Levels:
        """The backbone's levels (registered once, inside the encoder, so its weights are saved once)."""
        return self.model.model.pixel_level_module.encoder.adapter

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mask2Former's Hungarian-matched losses for label maps (classes 0..K-1, 255 ignored)."""
        mask_labels, class_labels = mask_targets(labels)
        out = self.model(pixel_values=self.normalise(images), mask_labels=mask_labels, class_labels=class_labels)
        return {"loss_mask2former": out.loss}

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        """The losses when ``labels`` are given (training, also through DistributedDataParallel), else
        per-pixel class scores."""
        return self.scores(images) if labels is None else self.loss(images, labels)

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel class scores (B, K, H, W) at the input size: Mask2Former's semantic inference.

        The normalised input is zero-padded (right, bottom) to a multiple of the backbone's coarsest
        stride, and the scores are cropped back.
        """
        height, width = images.shape[-2:]
        divisor = self.backbone.strides[-1]
        pad_h, pad_w = -height % divisor, -width % divisor
        return self.scores_of_input(F.pad(self.normalise(images), (0, pad_w, 0, pad_h)), height, width)

    def scores_of_input(self, pixel_values: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """:meth:`scores` of an input already normalised and padded, cropped to ``height`` x ``width``."""
        out = self.model(pixel_values=pixel_values)
        classes = out.class_queries_logits.softmax(-1)[..., :-1]          # drop "no object"
        masks = out.masks_queries_logits.sigmoid()
        masks = F.interpolate(masks, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
        return torch.einsum("bqc,bqhw->bchw", classes, masks[..., :height, :width])


def segmentation_loss(model: Mask2FormerSegmenter, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    images, labels = batch
    return model(images, labels)


@torch.no_grad()
def predict(model: Mask2FormerSegmenter, image: torch.Tensor, *, short_side: int, crop_size: int,
            mode: str = "whole", stride: int | None = None) -> torch.Tensor:
    """Class map (H, W) at the original size of ``image`` (3, H, W in [0, 1]).

    The image is resized so that its shorter side is ``short_side``; ``whole`` scores it in one pass,
    ``slide`` scores ``crop_size`` windows every ``stride`` pixels and averages overlaps. Scores are
    resized back to the original size before the arg-max.
    """
    height, width = image.shape[-2:]
    scale = short_side / min(height, width)
    size = (max(round(height * scale), 1), max(round(width * scale), 1))
    x = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)
    if mode == "whole":
        scores = model.scores(x)
    elif mode == "slide":
        stride = stride or crop_size * 2 // 3
        h, w = size
        scores = x.new_zeros((1, model.num_classes, h, w))
        count = x.new_zeros((1, 1, h, w))
        rows = max(h - crop_size + stride - 1, 0) // stride + 1
        cols = max(w - crop_size + stride - 1, 0) // stride + 1
        for r in range(rows):
            for c in range(cols):
                y0, x0 = min(r * stride, max(h - crop_size, 0)), min(c * stride, max(w - crop_size, 0))
                y1, x1 = min(y0 + crop_size, h), min(x0 + crop_size, w)
                scores[..., y0:y1, x0:x1] += model.scores(x[..., y0:y1, x0:x1])
                count[..., y0:y1, x0:x1] += 1
        scores = scores / count
    else:
        raise ValueError(f"ade20k.eval.mode must be 'whole' or 'slide', got {mode!r}")
    scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
    return scores[0].argmax(0)
