"""Task definitions: how each task builds its datasets and head, computes its loss, and scores.

A task plugs into the one training loop and the one evaluation job; adding a task means adding
a class here and its dataset rule, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from frozenrep.backbones import BackboneAdapter
from frozenrep.checkpoints import CheckpointEntry


def dataclass_from(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build a config dataclass, naming the params key at fault on an unknown one."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise KeyError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    converted = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                 for k, v in values.items()}
    return cls(**converted)


@dataclass
class Task:
    """What the training and evaluation jobs need to know about one task."""

    name: str
    table_metrics: tuple[str, ...]                  # metric keys that become table columns <task>_<key>
    datasets: Callable[[Path, dict], tuple[Dataset, Dataset]]
    build_head: Callable[[BackboneAdapter, Dataset, dict, CheckpointEntry], nn.Module]
    loss: Callable[[nn.Module, Any], dict[str, torch.Tensor]]
    collate: Callable
    evaluate: Callable[[nn.Module, Dataset, dict, torch.device], tuple[dict[str, float], Any]]
    # (model, val set, cfg, device, evaluate's second result, out dir, count) -> the PNGs written
    pictures: Callable[[nn.Module, Any, dict, torch.device, Any, Path, int], list[Path]]


def _coco_task() -> Task:
    from frozenrep.data.coco import CocoDetection, collate
    from frozenrep.evaluation.coco import evaluate_detection
    from frozenrep.heads.detection import DetectionHeadConfig, build_mask_rcnn, detection_loss

    def datasets(root: Path, cfg: dict) -> tuple[Dataset, Dataset]:
        return CocoDetection(root, "train", train=True), CocoDetection(root, "val", train=False)

    def build_head(backbone: BackboneAdapter, train_set: Dataset, cfg: dict, entry: CheckpointEntry) -> nn.Module:
        head = dataclass_from(DetectionHeadConfig, cfg.get("head", {}), "coco.head")
        return build_mask_rcnn(backbone, train_set.num_classes, head, entry.input_mean, entry.input_std)

    def evaluate(model: nn.Module, val_set: Dataset, cfg: dict, device: torch.device):
        return evaluate_detection(model, val_set, batch_size=cfg.get("eval", {}).get("batch_size", 2), device=device)

    def pictures(model: nn.Module, val_set: Dataset, cfg: dict, device: torch.device, results: Any, out: Path,
                 count: int) -> list[Path]:
        from frozenrep.pictures import detection_pictures

        return detection_pictures(val_set, results, out, count)

    return Task("coco", ("box_ap", "mask_ap"), datasets, build_head, detection_loss, collate, evaluate, pictures)


def _ade20k_task() -> Task:
    from frozenrep.data.ade20k import ADE20KSegmentation, collate
    from frozenrep.evaluation.segmentation import evaluate_segmentation
    from frozenrep.heads.segmentation import Mask2FormerSegmenter, SegmentationHeadConfig, segmentation_loss

    def datasets(root: Path, cfg: dict) -> tuple[Dataset, Dataset]:
        data = cfg.get("data", {})
        options = dict(crop_size=data.get("crop_size", 512), scale=tuple(data.get("scale", (512, 2048))),
                       ratio_range=tuple(data.get("ratio_range", (0.5, 2.0))),
                       on_bad_sample=data.get("on_bad_sample", "error"))
        return (ADE20KSegmentation(root, "train", train=True, **options),
                ADE20KSegmentation(root, "val", train=False, **options))

    def build_head(backbone: BackboneAdapter, train_set: Dataset, cfg: dict, entry: CheckpointEntry) -> nn.Module:
        head = dataclass_from(SegmentationHeadConfig, cfg.get("head", {}), "ade20k.head")
        return Mask2FormerSegmenter(backbone, train_set.num_classes, head, entry.input_mean, entry.input_std)

    def predict_options(cfg: dict) -> dict[str, Any]:
        ev, data = cfg.get("eval", {}), cfg.get("data", {})
        return dict(short_side=ev.get("short_side", 512), crop_size=data.get("crop_size", 512),
                    mode=ev.get("mode", "whole"), stride=ev.get("stride"))

    def evaluate(model: nn.Module, val_set: Dataset, cfg: dict, device: torch.device):
        return evaluate_segmentation(model, val_set, device=device, **predict_options(cfg))

    def pictures(model: nn.Module, val_set: Dataset, cfg: dict, device: torch.device, _: Any, out: Path,
                 count: int) -> list[Path]:
        from frozenrep.pictures import segmentation_pictures

        return segmentation_pictures(model, val_set, out, count, device, **predict_options(cfg))

    return Task("ade20k", ("miou",), datasets, build_head, segmentation_loss, collate, evaluate, pictures)


def _k400_task() -> Task:
    from frozenrep.data.kinetics import KineticsClips, KineticsIndex, class_names, collate, multiview_clips
    from frozenrep.evaluation.distributed import shard
    from frozenrep.evaluation.video import evaluate_video
    from frozenrep.heads.video import VideoClassifier, VideoHeadConfig, video_loss

    def datasets(root: Path, cfg: dict) -> tuple[Dataset, Any]:
        data, head = cfg.get("data", {}), cfg.get("head", {})
        duration, policy = data.get("clip_duration", 2.0), data.get("on_bad_sample", "skip")
        classes = class_names(root)
        train_index = KineticsIndex(root, "train", classes, duration, policy)
        clips = KineticsClips(train_index, clip_duration=duration, num_frames=head.get("num_frames", 16),
                              size=data.get("size", 224), hflip=data.get("hflip", True))
        return clips, KineticsIndex(root, "val", classes, duration, policy)

    def build_head(backbone: BackboneAdapter, train_set: Dataset, cfg: dict, entry: CheckpointEntry) -> nn.Module:
        head = dataclass_from(VideoHeadConfig, cfg.get("head", {}), "k400.head")
        return VideoClassifier(backbone, train_set.num_classes, head, entry.input_mean, entry.input_std)

    def views_of(val_index: Any, cfg: dict, videos: Any, clips_per_video: int, spatial_crops: int):
        data = cfg.get("data", {})
        return multiview_clips(val_index, clip_duration=data.get("clip_duration", 2.0), clips_per_video=clips_per_video,
                               num_frames=cfg.get("head", {}).get("num_frames", 16), size=data.get("size", 224),
                               spatial_crops=spatial_crops, videos=videos)

    def evaluate(model: nn.Module, val_index: Any, cfg: dict, device: torch.device):
        ev = cfg.get("eval", {})
        mine = shard(len(val_index))  # under torchrun: this rank's videos (evaluate_video pools the scores)
        views = views_of(val_index, cfg, mine, ev.get("clips_per_video", 4), ev.get("spatial_crops", 3))
        return evaluate_video(model, views, len(mine), device, batch_views=ev.get("batch_views", 8))

    def pictures(model: nn.Module, val_index: Any, cfg: dict, device: torch.device, scores: Any, out: Path,
                 count: int) -> list[Path]:
        from frozenrep.pictures import video_pictures

        first = range(min(count, len(val_index)))  # one centre view of each: the frames shown
        return video_pictures(val_index, scores, views_of(val_index, cfg, first, 1, 1), out)

    return Task("k400", ("top1",), datasets, build_head, video_loss, collate, evaluate, pictures)


_FACTORIES: dict[str, Callable[[], Task]] = {"coco": _coco_task, "ade20k": _ade20k_task, "k400": _k400_task}
TASKS: tuple[str, ...] = tuple(_FACTORIES)


def get_task(name: str) -> Task:
    if name not in _FACTORIES:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return _FACTORIES[name]()
