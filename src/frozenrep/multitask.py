"""One shared frozen base network: the backbone runs once per frame and feeds every task head.

In the frozen setting (Lin et al., NeurIPS 2022) one backbone serves all tasks, so a deployment
needs its features once, whatever the number of heads. :class:`SharedBackbone` holds one frozen
body and the heads the workflow trained on it (each trained alone), and :meth:`SharedBackbone.predict`
computes the body's features once for a clip of frames and gives them to

* the detection head (Mask R-CNN + FPN): boxes, labels, scores and masks per frame;
* the segmentation head (Mask2Former): a class map per frame;
* the video head: class probabilities for the clip.

Each head receives exactly the features it would have computed itself from the same input (the
adapter's :meth:`~frozenrep.backbones.BackboneAdapter.given_features`); a test checks that the
outputs equal those of the heads run one by one, with one body forward instead of three. The
frames go to the backbone at their own size (a multiple of the backbone's coarsest stride): the
shared pass cannot resize the input per head the way each head's own evaluation does.

    python -m frozenrep.multitask --configfile params/default.yaml --backbone tiny-swin-supervised \\
        --seed 0 data/k400/videos/val/<class>/<video>.mp4 --out prediction.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from frozenrep.backbones import BackboneAdapter, build_backbone
from frozenrep.checkpoints import CheckpointEntry

TASK_ORDER = ("coco", "ade20k", "k400")


class MultiTaskError(ValueError):
    """A shared model that cannot be assembled or run; the message names the file or setting."""


@dataclass
class Prediction:
    """What :meth:`SharedBackbone.predict` returns for a clip of T frames (heads that are present)."""

    detections: list[dict[str, torch.Tensor]] | None = None  # per frame: boxes, labels, scores, masks
    segmentation: torch.Tensor | None = None                  # (T, H, W) class ids
    video: torch.Tensor | None = None                         # (classes,) probabilities of the clip


class SharedBackbone(nn.Module):
    """One frozen backbone body and the heads trained on it; :meth:`predict` runs the body once.

    ``heads`` maps a task name (``coco``, ``ade20k``, ``k400``) to its model, built on an adapter of
    ``body`` (:func:`adapter_of`). ``body_passes`` counts the body's forwards.
    """

    def __init__(self, body: nn.Module, heads: dict[str, nn.Module], entry: CheckpointEntry) -> None:
        super().__init__()
        unknown = sorted(set(heads) - set(TASK_ORDER))
        if unknown:
            raise MultiTaskError(f"no shared-pass path for task(s) {unknown}; known: {list(TASK_ORDER)}")
        self.body = body
        self.adapter = adapter_of(body)  # the one pass: its features go to every head's own adapter
        self.heads = nn.ModuleDict(heads)
        for task, head in heads.items():
            if head_adapter(task, head).body is not body:
                raise MultiTaskError(f"the {task} head is not built on the shared body (use adapter_of(body))")
        self.stride = max(head_adapter(t, h).strides[-1] for t, h in heads.items())
        self.register_buffer("mean", torch.tensor(entry.input_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(entry.input_std).view(1, 3, 1, 1), persistent=False)
        self.body_passes = 0
        self.eval()

    def train(self, mode: bool = True) -> "SharedBackbone":
        return super().train(False)  # inference only

    def body_features(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """The body's features of normalised frames, NCHW, finest first: the one backbone pass."""
        self.body_passes += 1
        return self.adapter._features(inputs)

    @torch.inference_mode()
    def predict(self, frames: torch.Tensor) -> Prediction:
        """All heads' predictions for ``frames`` (T, 3, H, W) in 0..1, with one backbone pass."""
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise MultiTaskError(f"frames must be (T, 3, H, W), got {tuple(frames.shape)}")
        t, _, height, width = frames.shape
        if height % self.stride or width % self.stride:
            raise MultiTaskError(f"frames are {height}x{width}; the shared pass needs sides that are multiples of "
                                 f"the backbone's coarsest stride {self.stride} (resize or crop them first)")
        if "k400" in self.heads:
            self.heads["k400"].check_frames(t)
        inputs = (frames - self.mean) / self.std
        feats = self.body_features(inputs)
        out = Prediction()
        for task, head in self.heads.items():
            with head_adapter(task, head).given_features(inputs, feats):
                if task == "coco":
                    out.detections = detect(head, inputs)
                elif task == "ade20k":
                    out.segmentation = head.scores_of_input(inputs, height, width).argmax(1)
                else:
                    out.video = head.classify(head.tokens_of_input(inputs, 1)).softmax(-1)[0]
        return out


def head_adapter(task: str, head: nn.Module) -> BackboneAdapter:
    """The backbone adapter inside a task's model."""
    return head.backbone.body if task == "coco" else head.backbone


def detect(model: nn.Module, inputs: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """torchvision Mask R-CNN's inference on normalised, unresized, unpadded inputs (N, 3, H, W):
    what ``model(images)`` gives when its transform leaves the size alone."""
    from torchvision.models.detection.image_list import ImageList

    sizes = [tuple(inputs.shape[-2:])] * inputs.shape[0]
    images = ImageList(inputs, sizes)
    features = model.backbone(inputs)
    proposals, _ = model.rpn(images, features)
    detections, _ = model.roi_heads(features, proposals, images.image_sizes)
    return model.transform.postprocess(detections, images.image_sizes, sizes)


def adapter_of(body: nn.Module) -> BackboneAdapter:
    """A frozen adapter on a shared body (each head has its own adapter object, all on one body)."""
    return BackboneAdapter(body, mode="frozen")


def load_shared(config: dict[str, Any], registry: dict[str, CheckpointEntry], backbone: str, seed: int,
                root: Path = Path("."), device: torch.device | str = "cpu") -> tuple[SharedBackbone, dict[str, list[str]]]:
    """The profile's frozen heads of ``backbone`` and ``seed`` (as the workflow trained them under
    ``root``) on one body loaded once; also each task's class names."""
    from frozenrep.config import DATASET_OF_TASK, job_spec
    from frozenrep.jobs import job_fingerprint, load_head_weights
    from frozenrep.tasks import get_task

    if backbone not in registry:
        raise MultiTaskError(f"backbone {backbone!r} is not in the registry; known: {sorted(registry)}")
    entry = registry[backbone]
    checkpoint = root / entry.local_path()
    if not checkpoint.is_file():
        raise MultiTaskError(f"checkpoint {checkpoint} does not exist; run `snakemake {entry.local_path()}` first")
    body = build_backbone(entry, checkpoint, mode="frozen").body
    heads, names = {}, {}
    for task in [t for t in TASK_ORDER if t in config["tasks"]]:
        spec = job_spec(config, registry, task, backbone, "frozen", seed)
        head_file = root / "runs" / task / backbone / "frozen" / f"seed{seed}" / "head.safetensors"
        if not head_file.is_file():
            raise MultiTaskError(f"no frozen {task} head at {head_file}; train it first: "
                                 f"snakemake --cores all {head_file.relative_to(root)}")
        manifest = root / "data" / f"{DATASET_OF_TASK[task]}.manifest.json"
        data_root = Path(json.loads(manifest.read_text())["root"])
        data_root = data_root if data_root.is_absolute() else root / data_root
        names[task] = class_names(task, data_root)
        classes = SimpleNamespace(num_classes=len(names[task]) + (1 if task == "coco" else 0))  # COCO: + background
        model = get_task(task).build_head(adapter_of(body), classes, spec["task_config"], entry)
        meta = load_head_weights(model, head_file)
        if meta.get("fingerprint") != job_fingerprint(spec, checkpoint):
            raise MultiTaskError(f"{head_file} was trained with other settings or another checkpoint than the "
                                 f"profile's; rerun the workflow (snakemake) to retrain it")
        heads[task] = model
    if not heads:
        raise MultiTaskError(f"the profile's tasks {config['tasks']} include none of {list(TASK_ORDER)}")
    return SharedBackbone(body, heads, entry).to(device), names


def class_names(task: str, root: Path) -> list[str]:
    """A task's class names in label order, read from the dataset's own small files only: the
    heads need just their number, and building a training set would open every Kinetics video
    (and parse COCO's 450 MB train2017 annotations)."""
    if task == "coco":
        from frozenrep.data.coco import annotation_file

        categories = json.loads(annotation_file(root, "val").read_text())["categories"]
        return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]  # labels 1..K by sorted id
    if task == "ade20k":
        from frozenrep.data.ade20k import read_class_names

        return read_class_names(root)
    from frozenrep.data.kinetics import class_names as kinetics_classes

    return kinetics_classes(root)


def summarise(prediction: Prediction, names: dict[str, list[str]], score_threshold: float = 0.5) -> dict[str, Any]:
    """A JSON-able summary: detections above ``score_threshold`` per frame, the share of each class
    in the segmentation, and the clip's five most likely classes."""
    out: dict[str, Any] = {}
    if prediction.detections is not None:
        out["detections"] = [[{"category": names["coco"][int(label) - 1], "score": round(float(score), 4),
                               "box_xyxy": [round(float(v), 1) for v in box]}
                              for box, label, score in zip(d["boxes"], d["labels"], d["scores"])
                              if score >= score_threshold] for d in prediction.detections]
    if prediction.segmentation is not None:
        counts = torch.bincount(prediction.segmentation.flatten(), minlength=len(names["ade20k"]))
        out["segmentation_shares"] = {names["ade20k"][k]: round(float(c) / prediction.segmentation.numel(), 4)
                                      for k, c in enumerate(counts.tolist()) if c}
    if prediction.video is not None:
        top = prediction.video.topk(min(5, prediction.video.numel()))
        out["video_top5"] = [{"class": names["k400"][int(i)], "probability": round(float(p), 4)}
                             for p, i in zip(top.values, top.indices)]
    return out


def main(argv: list[str] | None = None) -> int:
    from frozenrep.checkpoints import load_registry
    from frozenrep.config import load_profile
    from frozenrep.data.kinetics import centre_clip
    from frozenrep.io import write_json_atomic
    from frozenrep.jobs import pick_device

    parser = argparse.ArgumentParser(description="All frozen heads of one backbone on a video, one backbone pass.")
    parser.add_argument("video", type=Path, help="a video file (mp4, ...) PyAV can decode")
    parser.add_argument("--configfile", type=Path, default=Path("params/default.yaml"), help="the profile")
    parser.add_argument("--backbone", required=True, help="a backbone of the profile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=Path("."), help="the workspace the workflow ran in")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="detections shown")
    parser.add_argument("--out", type=Path, help="write the summary here (JSON) instead of printing it")
    args = parser.parse_args(argv)
    try:
        config = load_profile(args.root / args.configfile, args.root / "params" / "schemas" / "config.schema.yaml")
        registry = load_registry(args.root / config["registry"])
        device = pick_device(config.get("device", "auto"))
        model, names = load_shared(config, registry, args.backbone, args.seed, args.root, device)
        k400 = config["k400"]
        clip = centre_clip(args.video, clip_duration=k400["data"]["clip_duration"],
                           num_frames=k400["head"]["num_frames"], size=k400["data"]["size"])
        prediction = model.predict(clip.permute(1, 0, 2, 3).to(device))
    except (MultiTaskError, OSError, KeyError, ValueError, RuntimeError) as err:
        print(f"frozenrep.multitask: {err}", file=sys.stderr)
        return 1
    summary = {"video": str(args.video), "backbone": args.backbone, "seed": args.seed, "frames": clip.shape[1],
               "backbone_passes": model.body_passes, **summarise(prediction, names, args.score_threshold)}
    if args.out:
        write_json_atomic(args.out, summary)
    else:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
