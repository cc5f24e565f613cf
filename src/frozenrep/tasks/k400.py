"""The K400 task: a temporal head on per-frame backbone features, scored by multi-view top-1."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from frozenrep.backbones import BackboneAdapter
from frozenrep.checkpoints import CheckpointEntry
from frozenrep.config import config_from
from frozenrep.data.k400 import KineticsClips, KineticsIndex, class_names, collate, multiview_clips
from frozenrep.evaluation.k400 import evaluate_video
from frozenrep.heads.k400 import VideoClassifier, VideoHeadConfig, video_loss
from frozenrep.pictures import captioned, save_png, to_uint8, upscale, upscale_factor
from frozenrep.runtime import shard
from frozenrep.tasks import TASKS, Task


def datasets(root: Path, cfg: dict) -> tuple[KineticsClips, KineticsIndex]:
    data = cfg["data"]
    duration, policy = data["clip_duration"], data["on_bad_sample"]
    classes = class_names(root)
    train_index = KineticsIndex(root, "train", classes, duration, policy)
    clips = KineticsClips(train_index, clip_duration=duration, num_frames=cfg["head"]["num_frames"],
                          size=data["size"], hflip=data["hflip"])
    return clips, KineticsIndex(root, "val", classes, duration, policy)


def build_head(backbone: BackboneAdapter, train_set: Any, cfg: dict, entry: CheckpointEntry) -> nn.Module:
    head = config_from(VideoHeadConfig, cfg["head"], "k400.head")
    return VideoClassifier(backbone, train_set.num_classes, head, *entry.normalisation())


def views_of(val_index: KineticsIndex, cfg: dict, videos: Any, clips_per_video: int, spatial_crops: int):
    data = cfg["data"]
    return multiview_clips(val_index, clip_duration=data["clip_duration"], clips_per_video=clips_per_video,
                           num_frames=cfg["head"]["num_frames"], size=data["size"], spatial_crops=spatial_crops,
                           videos=videos)


def evaluate(model: nn.Module, val_index: KineticsIndex, cfg: dict, device: torch.device):
    ev = cfg["eval"]
    mine = shard(len(val_index))  # under torchrun: this rank's videos (evaluate_video pools the scores)
    views = views_of(val_index, cfg, mine, ev["clips_per_video"], ev["spatial_crops"])
    return evaluate_video(model, views, len(mine), device, batch_views=ev["batch_views"])


def pictures(model: nn.Module, val_index: KineticsIndex, cfg: dict, device: torch.device, scores: Any, out: Path,
             count: int) -> list[Path]:
    first = range(min(count, len(val_index)))  # one centre view of each: the frames shown
    return video_pictures(val_index, scores, views_of(val_index, cfg, first, 1, 1), out)


def shared_predict(model: VideoClassifier, inputs: torch.Tensor) -> torch.Tensor:
    """The class probabilities of the clip of normalised frames (T, 3, H, W)."""
    return model.classify(model.tokens_of_input(inputs, 1)).softmax(-1)[0]


def summarise(probabilities: torch.Tensor, names: list[str], threshold: float) -> dict[str, Any]:
    """The clip's five most likely classes."""
    top = probabilities.topk(min(5, probabilities.numel()))
    return {"video_top5": [{"class": names[int(i)], "probability": round(float(p), 4)}
                           for p, i in zip(top.values, top.indices)]}


def video_pictures(index: Any, scores: torch.Tensor, clips: Iterable[tuple[int, int, torch.Tensor]], out_dir: Path,
                   frames: int = 4) -> list[Path]:
    """One strip per video of ``clips`` (``(video index, label, views)``, as from multiview_clips):
    ``frames`` evenly spaced frames of its first view, captioned with the true class and the
    predicted one (the arg-max of the video's pooled ``scores``, with its probability)."""
    written = []
    for video, label, views in clips:
        clip = views[0]                                   # (C, T, H, W) in [0, 1]
        steps = np.linspace(0, clip.shape[1] - 1, frames).round().astype(int)
        factor = upscale_factor(*clip.shape[-2:]) // 2 or 1
        strip = torch.cat([upscale(to_uint8(clip[:, t]), factor) for t in steps], dim=-1)
        probability, predicted = scores[video].max(0)
        verdict = "right" if int(predicted) == label else "wrong"
        caption = (f"true: {index.classes[label]}   predicted: {index.classes[int(predicted)]} "
                   f"({float(probability):.2f}, {verdict})   frames {', '.join(map(str, steps))}")
        name = Path(index.videos[video][0]).stem
        written.append(save_png(captioned([(caption, strip)]), out_dir / f"{video:02d}-{name}.png"))
    return written


TASK = Task(TASKS["k400"], datasets, build_head, video_loss, collate, evaluate, pictures,
            class_names=class_names, num_classes=len, levels=lambda model: model.backbone,
            check_frames=lambda model, frames: model.check_frames(frames), shared_predict=shared_predict,
            summarise=summarise)


def clip_from_file(path: Path, cfg: dict) -> torch.Tensor:
    """One centre test view (C, T, size, size) of a video file, cut as this task's settings say."""
    from frozenrep.data.k400 import centre_clip

    return centre_clip(path, clip_duration=cfg["data"]["clip_duration"], num_frames=cfg["head"]["num_frames"],
                       size=cfg["data"]["size"])
