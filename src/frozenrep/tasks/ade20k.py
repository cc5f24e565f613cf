"""The ADE20K task: Mask2Former semantic segmentation, scored by mIoU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from frozenrep.backbones import BackboneAdapter
from frozenrep.checkpoints import CheckpointEntry
from frozenrep.config import config_from
from frozenrep.data.ade20k import ADE20KSegmentation, collate, read_class_names
from frozenrep.evaluation.ade20k import evaluate_segmentation
from frozenrep.heads.ade20k import Mask2FormerSegmenter, SegmentationHeadConfig, segmentation_loss
from frozenrep.pictures import captioned, class_overlay, palette, save_png, to_uint8, upscale, upscale_factor
from frozenrep.tasks import TASKS, Task


def datasets(root: Path, cfg: dict) -> tuple[ADE20KSegmentation, ADE20KSegmentation]:
    data = cfg["data"]
    options = dict(crop_size=data["crop_size"], scale=tuple(data["scale"]), ratio_range=tuple(data["ratio_range"]),
                   on_bad_sample=data["on_bad_sample"])
    return (ADE20KSegmentation(root, "train", train=True, **options),
            ADE20KSegmentation(root, "val", train=False, **options))


def build_head(backbone: BackboneAdapter, train_set: Any, cfg: dict, entry: CheckpointEntry) -> nn.Module:
    head = config_from(SegmentationHeadConfig, cfg["head"], "ade20k.head")
    return Mask2FormerSegmenter(backbone, train_set.num_classes, head, *entry.normalisation())


def predict_options(cfg: dict) -> dict[str, Any]:
    return dict(short_side=cfg["eval"]["short_side"], crop_size=cfg["data"]["crop_size"], mode=cfg["eval"]["mode"],
                stride=cfg["eval"]["stride"])


def evaluate(model: nn.Module, val_set: ADE20KSegmentation, cfg: dict, device: torch.device):
    return evaluate_segmentation(model, val_set, device=device, **predict_options(cfg))


def pictures(model: nn.Module, val_set: ADE20KSegmentation, cfg: dict, device: torch.device, _: Any, out: Path,
             count: int) -> list[Path]:
    return segmentation_pictures(model, val_set, out, count, device, **predict_options(cfg))


def shared_predict(model: Mask2FormerSegmenter, inputs: torch.Tensor) -> torch.Tensor:
    """The class map (T, H, W) of normalised frames at their own size."""
    return model.scores_of_input(inputs, *inputs.shape[-2:]).argmax(1)


def summarise(segmentation: torch.Tensor, names: list[str], threshold: float) -> dict[str, Any]:
    """The share of the pixels of each class present."""
    counts = torch.bincount(segmentation.flatten(), minlength=len(names))
    return {"segmentation_shares": {names[k]: round(float(c) / segmentation.numel(), 4)
                                    for k, c in enumerate(counts.tolist()) if c}}


def segmentation_pictures(model: torch.nn.Module, dataset: Any, out_dir: Path, count: int, device: torch.device,
                          **predict_options: Any) -> list[Path]:
    """The first ``count`` validation images: the true class map, then the predicted one, as overlays."""
    from frozenrep.heads.ade20k import predict

    colours = palette(dataset.num_classes)
    written = []
    model.eval()
    with torch.no_grad():
        for index in range(min(count, len(dataset))):
            image, labels = dataset[index]
            pred = predict(model, image.to(device), **predict_options).cpu()
            factor = upscale_factor(*image.shape[-2:])
            base = upscale(to_uint8(image), factor)
            panels = [("image", base), ("ground truth", class_overlay(base, upscale(labels, factor), colours)),
                      ("prediction", class_overlay(base, upscale(pred, factor), colours))]
            written.append(save_png(captioned(panels), out_dir / f"{index:02d}-{dataset.stems[index]}.png"))
    return written


TASK = Task(TASKS["ade20k"], datasets, build_head, segmentation_loss, collate, evaluate, pictures,
            class_names=read_class_names, num_classes=len, levels=lambda model: model.backbone,
            check_frames=lambda model, frames: None, shared_predict=shared_predict, summarise=summarise)
