"""Detection + instance segmentation: torchvision's Mask R-CNN with FPN on the backbone adapter.

Head capacity (FPN width, extra levels, RPN and box-head convolutions, mask-head depth) is set
by keyword arguments, because the head-capacity study varies it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from frozenrep.backbones import BackboneAdapter, Levels, feature_levels
from frozenrep.randomness import current_batch_seeds, sample_rng


@dataclass
class DetectionHeadConfig:
    """Mask R-CNN + FPN settings: the keys of ``coco.head`` (defaults in the profile schema)."""

    fpn_channels: int
    extra_blocks: str  # "maxpool" (P6 by max-pooling, the Mask R-CNN default) or "none"
    fpn_repeats: int  # stacked FPNs: >1 adds top-down passes over the pyramid (a heavier neck)
    anchor_sizes: Sequence[Sequence[int]]
    aspect_ratios: Sequence[float]
    rpn_convs: int
    box_head_convs: int  # 0: two fully connected layers; >0: "NconvFC" head with GroupNorm
    box_head_fc: int
    mask_head_convs: int
    roi_sampling_ratio: int  # RoIAlign sampling points per bin side (torchvision's Mask R-CNN: 2)
    min_size: int
    max_size: int
    rpn_batch_size_per_image: int
    box_batch_size_per_image: int
    rpn_pre_nms_top_n_train: int
    rpn_post_nms_top_n_train: int
    rpn_pre_nms_top_n_test: int
    rpn_post_nms_top_n_test: int
    detections_per_image: int
    score_threshold: float
    roi_heads: str  # "standard" (Mask R-CNN) or "cascade" (Cascade Mask R-CNN, Detectron2 only)


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class FPNBackbone(nn.Module):
    """The backbone's levels followed by a feature pyramid; ``out_channels`` as torchvision expects."""

    def __init__(self, body: Levels, out_channels: int, extra_blocks: str = "maxpool",
                 repeats: int = 1) -> None:
        super().__init__()
        if extra_blocks not in ("maxpool", "none"):
            raise ValueError(f"coco.head.extra_blocks must be 'maxpool' or 'none', got {extra_blocks!r}")
        if repeats < 1:
            raise ValueError(f"coco.head.fpn_repeats must be at least 1, got {repeats}")
        self.body = body
        # The first FPN reads the backbone's stages; each repeat is another torchvision FPN over the
        # previous pyramid (lateral 1x1 + top-down + 3x3), the "extra FPN repeats" of a heavier neck
        # [Vasconcelos22]. The max-pool level is added once, after the last.
        extra = LastLevelMaxPool() if extra_blocks == "maxpool" else None
        self.fpn = FeaturePyramidNetwork(body.channels, out_channels, extra_blocks=extra if repeats == 1 else None)
        self.repeats = nn.ModuleList(
            FeaturePyramidNetwork([out_channels] * len(body.channels), out_channels,
                                  extra_blocks=extra if i == repeats - 2 else None)
            for i in range(repeats - 1))
        self.out_channels = out_channels
        self.num_levels = len(body.channels) + (1 if extra_blocks == "maxpool" else 0)

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        pyramid = self.fpn(self.body(images))
        for fpn in self.repeats:
            pyramid = fpn(pyramid)
        return pyramid


class PerSampleSampler(BalancedPositiveNegativeSampler):
    """torchvision's positive/negative sampler, drawing each training image's anchors (RPN) or
    proposals (box head) from that sample's own seed (:mod:`frozenrep.randomness`), so an image gets
    the same ones whichever rank and batch it is in. Without published seeds it is torchvision's."""

    def __init__(self, sampler: BalancedPositiveNegativeSampler, stream: int) -> None:
        super().__init__(sampler.batch_size_per_image, sampler.positive_fraction)
        self.stream = stream

    def __call__(self, matched_idxs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        seeds = current_batch_seeds(len(matched_idxs))
        if seeds is None:
            positives, negatives = super().__call__(matched_idxs)
        else:
            positives, negatives = [], []
            for seed, matched in zip(seeds, matched_idxs):
                with sample_rng(seed, self.stream, matched.device):
                    pos, neg = super().__call__([matched])
                positives += pos
                negatives += neg
        self._sampled = (positives, negatives)
        return positives, negatives

    @property
    def counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What the last batch's losses are averaged over, as 0-d tensors on the batch's device:
        the sampled positives, and all sampled. Only data-parallel training asks, so they stay tensors:
        on a GPU each read makes the host wait for the device (reading them here, as this did, took
        12 of a COCO step's 68 waits)."""
        positives, negatives = self._sampled
        pos = torch.stack([p.sum() for p in positives]).sum()
        return pos, pos + torch.stack([n.sum() for n in negatives]).sum()


def build_mask_rcnn(backbone: BackboneAdapter, num_classes: int, head: DetectionHeadConfig,
                    image_mean: Sequence[float], image_std: Sequence[float]) -> MaskRCNN:
    """Mask R-CNN with FPN on ``backbone``'s levels (:func:`~frozenrep.backbones.feature_levels`);
    sized from their channels and strides only."""
    if head.roi_heads != "standard":
        raise ValueError(f"coco.head.roi_heads is {head.roi_heads!r}, which torchvision does not have (it has no Cascade "
                         "R-CNN): set coco.engine to detectron2, or roi_heads to standard.")
    levels = feature_levels(backbone)
    fpn = FPNBackbone(levels, head.fpn_channels, head.extra_blocks, head.fpn_repeats)
    if len(head.anchor_sizes) != fpn.num_levels:
        raise ValueError(f"coco.head.anchor_sizes has {len(head.anchor_sizes)} levels, but the FPN on this "
                         f"backbone has {fpn.num_levels} ({len(levels.channels)} levels"
                         f"{' + max-pool level' if head.extra_blocks == 'maxpool' else ''}); give one tuple per level.")
    anchors = AnchorGenerator(tuple(tuple(s) for s in head.anchor_sizes),
                              (tuple(head.aspect_ratios),) * fpn.num_levels)
    channels = head.fpn_channels
    rpn_head = RPNHead(channels, anchors.num_anchors_per_location()[0], conv_depth=head.rpn_convs)
    box_pool = MultiScaleRoIAlign(levels.names, output_size=7, sampling_ratio=head.roi_sampling_ratio)
    mask_pool = MultiScaleRoIAlign(levels.names, output_size=14, sampling_ratio=head.roi_sampling_ratio)
    if head.box_head_convs > 0:
        box_head: nn.Module = FastRCNNConvFCHead((channels, 7, 7), [channels] * head.box_head_convs,
                                                 [head.box_head_fc], norm_layer=_group_norm)
    else:
        box_head = TwoMLPHead(channels * 7 * 7, head.box_head_fc)
    mask_head = MaskRCNNHeads(channels, [channels] * head.mask_head_convs, 1, norm_layer=_group_norm)
    mask_predictor = MaskRCNNPredictor(channels, channels, num_classes)
    model = MaskRCNN(
        fpn, num_classes=None, min_size=head.min_size, max_size=head.max_size,
        image_mean=list(image_mean), image_std=list(image_std),
        rpn_anchor_generator=anchors, rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=head.rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=head.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=head.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=head.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=head.rpn_batch_size_per_image,
        box_roi_pool=box_pool, box_head=box_head,
        box_predictor=FastRCNNPredictor(head.box_head_fc, num_classes), box_batch_size_per_image=head.box_batch_size_per_image,
        box_detections_per_img=head.detections_per_image, box_score_thresh=head.score_threshold,
        mask_roi_pool=mask_pool, mask_head=mask_head, mask_predictor=mask_predictor,
    )
    model.rpn.fg_bg_sampler = PerSampleSampler(model.rpn.fg_bg_sampler, stream=1)
    model.roi_heads.fg_bg_sampler = PerSampleSampler(model.roi_heads.fg_bg_sampler, stream=2)
    return model


# Each loss term of torchvision's Mask R-CNN is a mean over: (sampler, which count) -- RPN anchors,
# sampled proposals, or positive proposals (the mask loss).
LOSS_NORMALISERS = {"loss_objectness": ("rpn", 1), "loss_rpn_box_reg": ("rpn", 1),
                    "loss_classifier": ("roi_heads", 1), "loss_box_reg": ("roi_heads", 1),
                    "loss_mask": ("roi_heads", 0)}


def loss_normalisers(model: nn.Module, device: torch.device) -> dict[str, torch.Tensor]:
    """What each loss term of ``model``'s last training forward is a mean over, on this rank: the
    detector's own ``loss_normalisers`` (the Detectron2 engine's), or torchvision Mask R-CNN's
    samplers' counts (:data:`LOSS_NORMALISERS`)."""
    own = getattr(model, "loss_normalisers", None)
    if own is not None:
        return own(device)
    counts = {name: getattr(model, name).fg_bg_sampler.counts for name in ("rpn", "roi_heads")}
    return {key: counts[name][which].float() for key, (name, which) in LOSS_NORMALISERS.items()}


def detection_loss(model: nn.Module, batch: tuple[list[torch.Tensor], list[dict]]) -> dict[str, torch.Tensor]:
    """The detector's own training losses (either engine's) for a batch of ``(images, targets)``.

    Under data-parallel training each term is rescaled from this rank's normaliser (its sampled
    anchors, proposals or positives) to the mean over all ranks', so that the averaged gradients
    are those of one process with the whole batch.
    """
    from frozenrep.runtime import distributed, global_normaliser_scale

    images, targets = batch
    losses = model(images, targets)
    if distributed()[1] == 1:
        return losses
    inner = getattr(model, "module", model)  # under DistributedDataParallel
    normalisers = loss_normalisers(inner, images[0].device)
    keys = [key for key in losses if key in normalisers]
    scale = global_normaliser_scale(torch.stack([normalisers[key] for key in keys]))
    return {key: value * scale[keys.index(key)] if key in normalisers else value for key, value in losses.items()}
