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

    frozenrep-predict-video --configfile params/default.yaml --backbone tiny-swin-supervised \\
        --seed 0 data/k400/videos/val/<class>/<video>.mp4 --out prediction.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frozenrep.backbones import BackboneAdapter, adapter_in, build_backbone
from frozenrep.checkpoints import CheckpointEntry
from frozenrep.config import job_spec
from frozenrep.jobs import checkpoint_sha256, load_head_weights
from frozenrep.paths import head_path, manifest_path
from frozenrep.tasks import TASK_NAMES, get_task


class MultiTaskError(ValueError):
    """A shared model that cannot be assembled or run; the message names the file or setting."""


class SharedBackbone(nn.Module):
    """One frozen backbone body and the heads trained on it; :meth:`predict` runs the body once.

    ``heads`` maps a task name to its model, built on an adapter of ``body`` (:func:`adapter_of`).
    ``body_passes`` counts the body's forwards.
    """

    def __init__(self, body: nn.Module, heads: dict[str, nn.Module], entry: CheckpointEntry) -> None:
        super().__init__()
        unknown = sorted(set(heads) - set(TASK_NAMES))
        if unknown:
            raise MultiTaskError(f"no shared-pass path for task(s) {unknown}; known: {list(TASK_NAMES)}")
        self.body = body
        self.adapter = adapter_of(body)  # the one pass: its features go to every head's own adapter
        self.tasks = {name: get_task(name) for name in heads}
        self.heads = nn.ModuleDict(heads)
        for name, head in heads.items():
            if adapter_in(self.tasks[name].levels(head)).body is not body:
                raise MultiTaskError(f"the {name} head is not built on the shared body (use adapter_of(body))")
        self.stride = max(self.tasks[n].levels(h).strides[-1] for n, h in heads.items())
        mean, std = entry.normalisation()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.body_passes = 0
        self.eval()

    def train(self, mode: bool = True) -> "SharedBackbone":
        return super().train(False)  # inference only

    def body_features(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """The body's features of normalised frames, NCHW, finest first: the one backbone pass."""
        self.body_passes += 1
        return self.adapter._features(inputs)

    @torch.inference_mode()
    def predict(self, frames: torch.Tensor) -> dict[str, Any]:
        """Every head's prediction for ``frames`` (T, 3, H, W) in 0..1, with one backbone pass:
        ``{task: output}`` (coco: detections per frame; ade20k: (T, H, W) class ids; k400: the
        clip's class probabilities)."""
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise MultiTaskError(f"frames must be (T, 3, H, W), got {tuple(frames.shape)}")
        t, _, height, width = frames.shape
        if height % self.stride or width % self.stride:
            raise MultiTaskError(f"frames are {height}x{width}; the shared pass needs sides that are multiples of "
                                 f"the backbone's coarsest stride {self.stride} (resize or crop them first)")
        for name, head in self.heads.items():
            self.tasks[name].check_frames(head, t)
        inputs = (frames - self.mean) / self.std
        feats = self.body_features(inputs)
        out = {}
        for name, head in self.heads.items():
            task = self.tasks[name]
            with adapter_in(task.levels(head)).given_features(inputs, feats):
                out[name] = task.shared_predict(head, inputs)
        return out


def adapter_of(body: nn.Module) -> BackboneAdapter:
    """A frozen adapter on a shared body (each head has its own adapter object, all on one body)."""
    return BackboneAdapter(body, mode="frozen")


class _ClassCount:
    """What a head builder reads of a training set: its number of classes."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes


def load_shared(config: dict[str, Any], registry: dict[str, CheckpointEntry], backbone: str, seed: int,
                root: Path = Path("."), device: torch.device | str = "cpu") -> tuple[SharedBackbone, dict[str, list[str]]]:
    """The profile's frozen heads of ``backbone`` and ``seed`` (as the workflow trained them under
    ``root``) on one body loaded once; also each task's class names."""
    if backbone not in registry:
        raise MultiTaskError(f"backbone {backbone!r} is not in the registry; known: {sorted(registry)}")
    entry = registry[backbone]
    checkpoint = root / entry.local_path()
    if not checkpoint.is_file():
        raise MultiTaskError(f"checkpoint {checkpoint} does not exist; run `snakemake {entry.local_path()}` first")
    body = build_backbone(entry, checkpoint, mode="frozen").body
    heads, names = {}, {}
    for name in config["tasks"]:
        task = get_task(name)
        spec = job_spec(config, registry, name, backbone, "frozen", seed)
        head_file = root / head_path(name, backbone, "frozen", seed)
        if not head_file.is_file():
            raise MultiTaskError(f"no frozen {name} head at {head_file}; train it first: "
                                 f"snakemake --cores all {head_file.relative_to(root)}")
        data_root = Path(json.loads((root / manifest_path(name)).read_text())["root"])
        data_root = data_root if data_root.is_absolute() else root / data_root
        names[name] = task.class_names(data_root)
        model = task.build_head(adapter_of(body), _ClassCount(task.num_classes(names[name])), spec.task_config, entry)
        meta = load_head_weights(model, head_file)
        if meta.get("fingerprint") != spec.fingerprint(checkpoint_sha256(checkpoint)):
            raise MultiTaskError(f"{head_file} was trained with other settings or another checkpoint than the "
                                 f"profile's; rerun the workflow (snakemake) to retrain it")
        heads[name] = model
    return SharedBackbone(body, heads, entry).to(device), names


def summarise(prediction: dict[str, Any], names: dict[str, list[str]], score_threshold: float = 0.5) -> dict[str, Any]:
    """A JSON-able summary of every head's prediction (``score_threshold``: detections shown)."""
    out: dict[str, Any] = {}
    for name, output in prediction.items():
        out.update(get_task(name).summarise(output, names[name], score_threshold))
    return out
