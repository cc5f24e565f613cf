"""Semantic segmentation metrics from one confusion matrix over the whole validation set.

IoU per class = TP / (TP + FP + FN), accumulated over all pixels of all images (never averaged
per image); pixels labelled 255 are ignored; a class with no ground truth and no prediction has
no IoU (NaN) and is left out of the mean, a class predicted but absent from the ground truth
has IoU 0.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from frozenrep.progress import Progress
from frozenrep.runtime import shard, sum_over_ranks

IGNORE_INDEX = 255


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(K, K) int64 counts, rows = ground truth, columns = prediction."""
    valid = target != ignore_index
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def metrics_from_confusion(conf: torch.Tensor) -> dict[str, Any]:
    """mIoU, pixel accuracy and mean class accuracy in percent, plus per-class IoU (None where undefined)."""
    conf = conf.double()
    tp = conf.diag()
    gt = conf.sum(1)
    union = gt + conf.sum(0) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    total = conf.sum()
    return {
        "miou": 100.0 * float(np.nanmean(iou.numpy())) if torch.isfinite(iou).any() else 0.0,
        "pixel_acc": 100.0 * float(tp.sum() / total) if total > 0 else 0.0,
        "mean_acc": 100.0 * float(np.nanmean(acc.numpy())) if torch.isfinite(acc).any() else 0.0,
        "per_class_iou": [None if np.isnan(v) else round(100.0 * v, 4) for v in iou.tolist()],
    }


@torch.no_grad()
def evaluate_segmentation(model: torch.nn.Module, dataset: Any, *, short_side: int, crop_size: int,
                          mode: str = "whole", stride: int | None = None,
                          device: torch.device | None = None) -> tuple[dict[str, Any], torch.Tensor]:
    """Predict every validation image at its original size and score the accumulated confusion matrix."""
    from frozenrep.heads.ade20k import predict

    device = device or next(model.parameters()).device
    model.eval()
    conf = torch.zeros(dataset.num_classes, dataset.num_classes, dtype=torch.int64)
    start = time.monotonic()
    mine = shard(len(dataset))  # under torchrun: this rank's images; the confusion matrices are summed below
    with Progress(len(mine), "evaluate ade20k", unit="img") as progress:
        for index in mine:
            image, labels = dataset[index]
            pred = predict(model, image.to(device), short_side=short_side, crop_size=crop_size, mode=mode,
                           stride=stride).cpu()
            conf += confusion_matrix(pred, labels, dataset.num_classes)
            progress.update()
    metrics = metrics_from_confusion(sum_over_ranks(conf))
    metrics["seconds"] = time.monotonic() - start
    return metrics, conf
