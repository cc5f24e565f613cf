"""COCO box and mask AP with pycocotools' COCOeval, from Mask R-CNN predictions."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader, Subset

from frozenrep.data.coco import CocoDetection, collate
from frozenrep.progress import Progress
from frozenrep.runtime import gather, shard

# COCOeval.stats indices -> our metric names (AP in percent, as papers report it)
STAT_NAMES = {0: "ap", 1: "ap50", 2: "ap75", 3: "ap_small", 4: "ap_medium", 5: "ap_large"}


def predictions_to_coco(outputs: list[dict[str, torch.Tensor]], image_ids: list[int],
                        dataset: CocoDetection, mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """Mask R-CNN outputs (xyxy boxes, labels, soft masks at image size) as COCO result records."""
    results = []
    for output, image_id in zip(outputs, image_ids):
        boxes = output["boxes"].cpu().numpy()
        scores = output["scores"].cpu().numpy()
        labels = output["labels"].cpu().numpy()
        masks = (output["masks"][:, 0] >= mask_threshold).cpu().numpy().astype(np.uint8) if "masks" in output else None
        for k in range(len(scores)):
            x0, y0, x1, y1 = boxes[k].tolist()
            record = {"image_id": int(image_id), "category_id": dataset.category_of[int(labels[k])],
                      "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(scores[k])}
            if masks is not None:
                rle = mask_utils.encode(np.asfortranarray(masks[k]))
                rle["counts"] = rle["counts"].decode("ascii")
                record["segmentation"] = rle
            results.append(record)
    return results


def coco_ap(dataset: CocoDetection, results: list[dict[str, Any]], iou_types: tuple[str, ...] = ("bbox", "segm"),
            image_ids: list[int] | None = None) -> dict[str, float | None]:
    """COCOeval summary for each IoU type: ``{"box_ap", "box_ap50", ..., "mask_ap", ...}`` in percent.

    No detections at all are scored by COCOeval too (an empty result set: AP 0 where there is
    ground truth, None where a size range has none).
    """
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        prefix = "box" if iou_type == "bbox" else "mask"
        with contextlib.redirect_stdout(io.StringIO()):
            detections = _results(dataset.coco, results)
            evaluator = COCOeval(dataset.coco, detections, iou_type)
            if image_ids is not None:
                evaluator.params.imgIds = list(image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        for index, name in STAT_NAMES.items():
            value = float(evaluator.stats[index])
            # COCOeval reports -1 where a size range has no ground truth: recorded as None (JSON null)
            metrics[f"{prefix}_{name}"] = 100.0 * value if value >= 0 else None
    return metrics


def _results(ground_truth: COCO, results: list[dict[str, Any]]) -> COCO:
    """The detections as a COCO object; ``loadRes`` cannot load an empty list, so no detections
    are an empty annotation set over the ground truth's images and categories."""
    if results:
        return ground_truth.loadRes([dict(r) for r in results])
    empty = COCO()
    empty.dataset = {"images": list(ground_truth.dataset["images"]),
                     "categories": list(ground_truth.dataset["categories"]), "annotations": []}
    empty.createIndex()
    return empty


@torch.no_grad()
def evaluate_detection(model: torch.nn.Module, dataset: CocoDetection, batch_size: int = 2,
                       device: torch.device | None = None, num_workers: int = 0) -> tuple[dict[str, float], list[dict]]:
    """Run ``model`` over ``dataset`` and score it with COCOeval; returns metrics and the result records."""
    device = device or next(model.parameters()).device
    model.eval()
    mine = shard(len(dataset))  # under torchrun: this rank's images; the results are pooled below
    loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, shuffle=False, collate_fn=collate,
                        num_workers=num_workers)
    results: list[dict[str, Any]] = []
    with Progress(len(mine), "evaluate coco", unit="img") as progress:
        for images, targets in loader:
            outputs = model([img.to(device) for img in images])
            results.extend(predictions_to_coco(outputs, [t["image_id"] for t in targets], dataset))
            progress.update(len(images))
    # Every rank's records, in the dataset's image order (stable: an image's own records keep theirs).
    position = {image_id: k for k, image_id in enumerate(dataset.ids)}
    results = sorted(gather(results), key=lambda record: position[record["image_id"]])
    return coco_ap(dataset, results, image_ids=dataset.ids), results
