"""The COCO task: Mask R-CNN + FPN on COCO 2017 instances, scored by COCOeval (box and mask AP)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from frozenrep.backbones import BackboneAdapter
from frozenrep.checkpoints import CheckpointEntry
from frozenrep.config import config_from
from frozenrep.data.coco import CocoDetection, annotation_file, collate
from frozenrep.evaluation.coco import evaluate_detection
from frozenrep.heads.coco import DetectionHeadConfig, build_mask_rcnn, detection_loss
from frozenrep.pictures import captioned, draw_instances, palette, save_png, to_uint8, upscale, upscale_factor
from frozenrep.tasks import TASKS, Task


def datasets(root: Path, cfg: dict) -> tuple[CocoDetection, CocoDetection]:
    return CocoDetection(root, "train", train=True), CocoDetection(root, "val", train=False)


def build_head(backbone: BackboneAdapter, train_set: Any, cfg: dict, entry: CheckpointEntry) -> nn.Module:
    """The detector of ``coco.engine``: torchvision's Mask R-CNN, or Detectron2's (Cascade) Mask R-CNN;
    both take the same batches and give the same losses and detections' format."""
    head = config_from(DetectionHeadConfig, cfg["head"], "coco.head")
    if cfg["engine"] == "detectron2":
        from frozenrep.heads.coco_detectron2 import build_detectron2_rcnn

        return build_detectron2_rcnn(backbone, train_set.num_classes, head, *entry.normalisation())
    return build_mask_rcnn(backbone, train_set.num_classes, head, *entry.normalisation())


def head_levels(model: nn.Module):
    """What either engine's detector reads its levels from (the adapter, or the simple feature pyramid)."""
    engine_levels = getattr(model, "levels", None)  # the Detectron2 engine's detector says
    return engine_levels() if engine_levels is not None else model.backbone.body


def evaluate(model: nn.Module, val_set: CocoDetection, cfg: dict, device: torch.device):
    return evaluate_detection(model, val_set, batch_size=cfg["eval"]["batch_size"], device=device)


def pictures(model: nn.Module, val_set: CocoDetection, cfg: dict, device: torch.device, results: Any, out: Path,
             count: int) -> list[Path]:
    return detection_pictures(val_set, results, out, count)


def class_names(root: Path) -> list[str]:
    """Category names in label order (labels 1..K by sorted id), from the small val annotations."""
    categories = json.loads(annotation_file(root, "val").read_text())["categories"]
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def detect(model: nn.Module, inputs: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """torchvision Mask R-CNN's inference on normalised, unresized, unpadded inputs (N, 3, H, W):
    what ``model(images)`` gives when its transform leaves the size alone. The Detectron2 engine's
    detector does the same in its own ``detect``."""
    if hasattr(model, "detect"):
        return model.detect(inputs)
    from torchvision.models.detection.image_list import ImageList

    sizes = [tuple(inputs.shape[-2:])] * inputs.shape[0]
    images = ImageList(inputs, sizes)
    features = model.backbone(inputs)
    proposals, _ = model.rpn(images, features)
    detections, _ = model.roi_heads(features, proposals, images.image_sizes)
    return model.transform.postprocess(detections, images.image_sizes, sizes)


def summarise(detections: list[dict[str, torch.Tensor]], names: list[str], threshold: float) -> dict[str, Any]:
    """Per frame, the detections scoring at least ``threshold``."""
    return {"detections": [[{"category": names[int(label) - 1], "score": round(float(score), 4),
                             "box_xyxy": [round(float(v), 1) for v in box]}
                            for box, label, score in zip(d["boxes"], d["labels"], d["scores"]) if score >= threshold]
                           for d in detections]}


def detection_pictures(dataset: Any, results: list[dict[str, Any]], out_dir: Path, count: int,
                       max_detections: int = 5) -> list[Path]:
    """The first ``count`` validation images: ground-truth instances, then the ``max_detections``
    highest-scoring predicted ones (from the COCO result records that were scored)."""
    from pycocotools import mask as mask_utils

    names = {cid: cat["name"] for cid, cat in dataset.coco.cats.items()}
    colour_of = dict(zip(sorted(names), palette(len(names))))
    written = []
    for index in range(min(count, len(dataset))):
        image, target = dataset[index]
        image_id = target["image_id"]
        factor = upscale_factor(*image.shape[-2:])
        base = upscale(to_uint8(image), factor)
        truth_ids = [dataset.category_of[int(k)] for k in target["labels"]]
        truth = draw_instances(base, target["boxes"] * factor, upscale(target["masks"], factor),
                               [names[c] for c in truth_ids], [colour_of[c] for c in truth_ids])
        mine = sorted((r for r in results if r["image_id"] == image_id), key=lambda r: -r["score"])[:max_detections]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in mine)],
                             dtype=torch.float32).reshape(-1, 4) * factor
        masks = None
        if mine and all("segmentation" in r for r in mine):
            masks = upscale(torch.from_numpy(np.stack([mask_utils.decode(r["segmentation"]) for r in mine])), factor)
        predicted = draw_instances(base, boxes, masks, [f"{names[r['category_id']]} {r['score']:.2f}" for r in mine],
                                   [colour_of[r["category_id"]] for r in mine])
        sheet = captioned([("ground truth", truth), (f"top {len(mine)} predictions", predicted)])
        written.append(save_png(sheet, out_dir / f"{index:02d}-image{image_id}.png"))
    return written


TASK = Task(TASKS["coco"], datasets, build_head, detection_loss, collate, evaluate, pictures,
            class_names=class_names, num_classes=lambda names: len(names) + 1,  # + background
            levels=head_levels, check_frames=lambda model, frames: None,
            shared_predict=detect, summarise=summarise)
