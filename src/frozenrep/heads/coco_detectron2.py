"""Detection + instance segmentation on Detectron2: its GeneralizedRCNN (Mask R-CNN, or Cascade
Mask R-CNN) with its FPN on the shared backbone adapter.

The model is built from Detectron2's own model-zoo configs (:data:`CONFIGS`); only what the
profile's head section sets, the same keys as the torchvision engine's (:class:`DetectionHeadConfig`),
replaces their values (:func:`detectron2_config`). :class:`Detectron2Detector` speaks the torchvision
engine's language to the rest of frozenrep: a list of images in [0, 1] and torchvision targets in,
the loss dict in training, torchvision-style detections (``boxes``, ``labels``, ``scores``, ``masks``
at image size) at evaluation, so the training loop, the evaluation, the feature cache and the shared
pass do not know which engine runs. Images are resized as the torchvision engine resizes them
(``min_size``/``max_size``, torchvision's GeneralizedRCNNTransform), so the two see the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import detectron2
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.proposal_generator import build_proposal_generator
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from frozenrep.backbones import BackboneAdapter, Levels, feature_levels
from frozenrep.heads.coco import DetectionHeadConfig
from frozenrep.randomness import current_batch_seeds, sample_rng

# coco.head.roi_heads -> the Detectron2 model-zoo config the model starts from
CONFIGS = {"standard": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
           "cascade": "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml"}


def config_file(roi_heads: str) -> Path:
    """The model-zoo config of ``roi_heads``, read from the installed package (``detectron2.model_zoo``
    itself imports ``pkg_resources``, which recent setuptools no longer has)."""
    if roi_heads not in CONFIGS:
        raise ValueError(f"coco.head.roi_heads must be one of {sorted(CONFIGS)}, got {roi_heads!r}")
    return Path(detectron2.__file__).parent / "model_zoo" / "configs" / CONFIGS[roi_heads]


def detectron2_config(head: DetectionHeadConfig, num_classes: int):
    """Detectron2's config for ``head``: its model-zoo file, with the profile's head keys in place of its values.
    ``num_classes`` counts the object classes (no background)."""
    if head.fpn_channels % 32 and (head.box_head_convs or head.mask_head_convs):
        raise ValueError(f"coco.head.fpn_channels is {head.fpn_channels}: Detectron2's GroupNorm in the box and mask "
                         "heads has 32 groups, so the width must be a multiple of 32 (or use engine torchvision).")
    cfg = get_cfg()
    cfg.merge_from_file(str(config_file(head.roi_heads)))
    model = cfg.MODEL
    model.FPN.OUT_CHANNELS = head.fpn_channels
    model.ANCHOR_GENERATOR.SIZES = [list(sizes) for sizes in head.anchor_sizes]
    model.ANCHOR_GENERATOR.ASPECT_RATIOS = [list(head.aspect_ratios)]
    model.RPN.CONV_DIMS = [-1] * head.rpn_convs
    model.RPN.BATCH_SIZE_PER_IMAGE = head.rpn_batch_size_per_image
    model.RPN.PRE_NMS_TOPK_TRAIN, model.RPN.POST_NMS_TOPK_TRAIN = (head.rpn_pre_nms_top_n_train,
                                                                   head.rpn_post_nms_top_n_train)
    model.RPN.PRE_NMS_TOPK_TEST, model.RPN.POST_NMS_TOPK_TEST = (head.rpn_pre_nms_top_n_test,
                                                                 head.rpn_post_nms_top_n_test)
    model.ROI_HEADS.NUM_CLASSES = num_classes
    model.ROI_HEADS.BATCH_SIZE_PER_IMAGE = head.box_batch_size_per_image
    model.ROI_HEADS.SCORE_THRESH_TEST = head.score_threshold
    cfg.TEST.DETECTIONS_PER_IMAGE = head.detections_per_image
    box = model.ROI_BOX_HEAD
    box.NUM_CONV, box.CONV_DIM, box.FC_DIM = head.box_head_convs, head.fpn_channels, head.box_head_fc
    # 0 convolutions: the 2fc head of the config; N: the "NconvFC" head, one fc, GroupNorm (as torchvision's)
    box.NUM_FC, box.NORM = (2, "") if head.box_head_convs == 0 else (1, "GN")
    box.POOLER_SAMPLING_RATIO = head.roi_sampling_ratio
    mask = model.ROI_MASK_HEAD
    mask.NUM_CONV, mask.CONV_DIM, mask.NORM = head.mask_head_convs, head.fpn_channels, "GN"
    mask.POOLER_SAMPLING_RATIO = head.roi_sampling_ratio
    return cfg


class LevelsBackbone(Backbone):
    """The backbone's levels (an adapter, or the simple feature pyramid on a plain one) as a
    Detectron2 ``Backbone``: a dict of NCHW maps and their ``ShapeSpec``s."""

    def __init__(self, levels: Levels) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(self.levels(images))

    def output_shape(self):
        return {name: ShapeSpec(channels=c, stride=s) for name, (c, s) in self.levels.output_shape().items()}


def build_fpn(levels: Levels, head: DetectionHeadConfig) -> nn.Module:
    """Detectron2's FPN on ``levels``, ``fpn_repeats`` of them stacked (each over the previous
    pyramid, the heavier neck of [Vasconcelos22]), with the max-pool level after the last."""
    if head.extra_blocks not in ("maxpool", "none"):
        raise ValueError(f"coco.head.extra_blocks must be 'maxpool' or 'none', got {head.extra_blocks!r}")
    bottom: Backbone = LevelsBackbone(levels)
    for repeat in range(head.fpn_repeats):
        last = repeat == head.fpn_repeats - 1
        bottom = FPN(bottom_up=bottom, in_features=list(bottom.output_shape()), out_channels=head.fpn_channels,
                     top_block=LastLevelMaxPool() if last and head.extra_blocks == "maxpool" else None)
    return bottom


class PerImageDraws:
    """One of Detectron2's per-image random draws (the RPN's anchor sampling, the RoI heads'
    proposal sampling), made from each training image's own seed (:mod:`frozenrep.randomness`) so an
    image gets the same anchors and proposals whichever rank and batch it is in. Detectron2 calls it
    once per image, in batch order: the k-th call of a forward is the k-th image's. Without published
    seeds it is Detectron2's own draw."""

    def __init__(self, draw, stream: int) -> None:
        self.draw, self.stream, self.seeds = draw, stream, None

    def __call__(self, labels: torch.Tensor, *args):
        if self.seeds is None:
            return self.draw(labels, *args)
        with sample_rng(next(self.seeds), self.stream, labels.device):
            return self.draw(labels, *args)


class Detectron2Detector(nn.Module):
    """Detectron2's GeneralizedRCNN behind the torchvision engine's interface (see the module's doc)."""

    def __init__(self, levels: Levels, num_classes: int, head: DetectionHeadConfig, image_mean, image_std) -> None:
        super().__init__()
        cfg = detectron2_config(head, num_classes - 1)
        fpn = build_fpn(levels, head)
        shapes = fpn.output_shape()
        if len(head.anchor_sizes) != len(shapes):
            raise ValueError(f"coco.head.anchor_sizes has {len(head.anchor_sizes)} levels, but the FPN on this "
                             f"backbone has {len(shapes)} ({', '.join(shapes)}); give one tuple per level.")
        cfg.MODEL.RPN.IN_FEATURES = list(shapes)
        # the backbone's levels; the max-pool level after them feeds the RPN only
        cfg.MODEL.ROI_HEADS.IN_FEATURES = list(shapes)[:len(levels.channels)]
        self.model = GeneralizedRCNN(backbone=fpn, proposal_generator=build_proposal_generator(cfg, shapes),
                                     roi_heads=build_roi_heads(cfg, shapes), pixel_mean=list(image_mean),
                                     pixel_std=list(image_std), input_format="RGB")
        # resizing only (its normalisation is not used: Detectron2 normalises itself)
        self.resize = GeneralizedRCNNTransform(head.min_size, head.max_size, list(image_mean), list(image_std))
        self.config_name = CONFIGS[head.roi_heads]
        rpn, roi_heads = self.model.proposal_generator, self.model.roi_heads
        self.draws = [PerImageDraws(rpn._subsample_labels, stream=1),
                      PerImageDraws(roi_heads._sample_proposals, stream=2)]
        rpn._subsample_labels, roi_heads._sample_proposals = self.draws
        # what each loss term of the last training forward was averaged over (loss_normalisers)
        self._counts: dict[str, int] = {}
        predictors = roi_heads.box_predictor if isinstance(roi_heads.box_predictor, nn.ModuleList) else [roi_heads.box_predictor]
        for stage, predictor in enumerate(predictors):
            suffix = f"_stage{stage}" if len(predictors) > 1 else ""  # the cascade's loss names
            predictor.register_forward_hook(self._count_proposals(suffix))
        roi_heads.mask_head.register_forward_pre_hook(self._count_masks)

    def _count_proposals(self, suffix: str):
        def hook(module, args, output) -> None:
            if self.training:  # the box losses are means over the sampled proposals the predictor scored
                self._counts["loss_cls" + suffix] = self._counts["loss_box_reg" + suffix] = args[0].shape[0]
        return hook

    def _count_masks(self, module, args) -> None:
        if self.training:  # the mask loss is a mean over the foreground proposals' masks
            self._counts["loss_mask"] = sum(len(instances) for instances in args[1])

    def loss_normalisers(self, device: torch.device) -> dict[str, torch.Tensor]:
        """What each loss term of the last training forward is a mean over, on this rank: the RPN's
        sampled anchors (a fixed number per image), the sampled proposals of each box stage, the
        foreground proposals of the mask head (:func:`frozenrep.heads.coco.detection_loss`)."""
        rpn = self.model.proposal_generator.batch_size_per_image * self._images
        counts = {"loss_rpn_cls": rpn, "loss_rpn_loc": rpn, **self._counts}
        return {key: torch.tensor(float(n), device=device) for key, n in counts.items()}

    def levels(self) -> Levels:
        """What the head reads its levels from (the adapter, or the pyramid on it)."""
        return backbone_levels(self.model.backbone)

    def _inputs(self, images: list[torch.Tensor], targets: list[dict] | None) -> list[dict]:
        self.resize.training = self.training
        inputs = []
        for k, image in enumerate(images):
            target = None if targets is None else {key: targets[k][key] for key in ("boxes", "labels", "masks")}
            resized, target = self.resize.resize(image, target)
            item = {"image": resized, "height": image.shape[-2], "width": image.shape[-1]}
            if target is not None:
                instances = Instances(tuple(resized.shape[-2:]))
                instances.gt_boxes = Boxes(target["boxes"])
                instances.gt_classes = target["labels"] - 1  # Detectron2's classes have no background
                instances.gt_masks = BitMasks(target["masks"].bool())
                item["instances"] = instances
            inputs.append(item)
        return inputs

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        """Training: the loss dict. Evaluation: torchvision-style detections at each image's own size."""
        inputs = self._inputs(images, targets if self.training else None)
        if self.training:
            seeds = current_batch_seeds(len(images))
            self._counts, self._images = {}, len(images)
            for draw in self.draws:
                draw.seeds = None if seeds is None else iter(seeds)
            try:
                with EventStorage():  # where Detectron2's heads put their training statistics
                    return self.model(inputs)
            finally:
                for draw in self.draws:
                    draw.seeds = None
        return [as_torchvision(out["instances"]) for out in self.model(inputs)]

    def detect(self, inputs: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Inference on normalised, unresized inputs (N, 3, H, W), as the shared multi-task pass gives them."""
        model = self.model
        images = ImageList.from_tensors(list(inputs), model.backbone.size_divisibility)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        results, _ = model.roi_heads(images, features, proposals, None)
        size = inputs.shape[-2:]
        return [as_torchvision(detector_postprocess(r, *size)) for r in results]


def as_torchvision(instances) -> dict[str, torch.Tensor]:
    """Detectron2's predicted ``Instances`` as torchvision's detection dict (labels from 1; masks N x 1 x H x W)."""
    out = {"boxes": instances.pred_boxes.tensor, "labels": instances.pred_classes + 1, "scores": instances.scores}
    if instances.has("pred_masks"):
        out["masks"] = instances.pred_masks[:, None].float()
    return out


def backbone_levels(fpn: nn.Module) -> Levels:
    """The levels at the bottom of a (stacked) Detectron2 FPN."""
    while not isinstance(fpn, LevelsBackbone):
        fpn = fpn.bottom_up
    return fpn.levels


def build_detectron2_rcnn(backbone: BackboneAdapter, num_classes: int, head: DetectionHeadConfig,
                          image_mean, image_std) -> Detectron2Detector:
    """Mask R-CNN or Cascade Mask R-CNN (``head.roi_heads``) on ``backbone``'s levels."""
    return Detectron2Detector(feature_levels(backbone), num_classes, head, image_mean, image_std)
