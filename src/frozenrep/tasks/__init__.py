"""The tasks: one declaration each, which everything else reads.

A task ``<name>`` is its declaration in :data:`DECLARATIONS` plus its own files, all named after it:

* ``frozenrep/data/<name>.py``: the reader of the real format (``verify_layout``, ``download``);
* ``frozenrep/synthetic/<name>.py``: the embedded default's generator (``generate``);
* ``frozenrep/heads/<name>.py`` and ``frozenrep/evaluation/<name>.py``: its head and its metric;
* ``frozenrep/tasks/<name>.py``: ``TASK``, a :class:`Task` that ties them to the one training loop,
  the head job's evaluation and the shared multi-task pass;
* its sections in params/schemas/config.schema.yaml (``datasets.<name>`` and ``<name>``).

The profile keys, the rules' wildcards, the table columns (``<name>_<metric>``), the dataset
rule's dispatch and the config checks all come from here. This module imports nothing heavy, so
Snakemake and the table scripts can read it without loading torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    from frozenrep.backbones import BackboneAdapter, Levels
    from frozenrep.checkpoints import CheckpointEntry


@dataclass(frozen=True)
class Declaration:
    """What the workflow needs to know of a task before any of its code runs."""

    name: str                            # profile section, wildcard, dataset name, column prefix, module name
    title: str                           # the task as the tables show it
    metrics: dict[str, str]              # table metrics, in column order: key -> title
    download_keys: tuple[str, ...]       # what datasets.<name>.download must set for `source: download`
    preload: tuple[str, ...] = ()        # libraries its jobs import only when they build the head or the data
                                         # (frozenrep.warm imports them once for every job)

    def module(self, package: str) -> Any:
        """The task's own module in ``package`` (data, synthetic, heads, evaluation, tasks)."""
        return importlib.import_module(f"frozenrep.{package}.{self.name}")


DECLARATIONS: tuple[Declaration, ...] = (
    # COCO 2017 detection and instance segmentation (Mask R-CNN + FPN): box and mask AP
    Declaration("coco", "COCO", {"box_ap": "box AP", "mask_ap": "mask AP"}, ("files",), ("pycocotools.coco",)),
    # ADE20K semantic segmentation (Mask2Former): mIoU
    Declaration("ade20k", "ADE20K", {"miou": "mIoU"}, ("files",),
                ("transformers.models.mask2former.modeling_mask2former",)),
    # Kinetics-400 action recognition (a temporal head on per-frame features): multi-view top-1
    Declaration("k400", "K400", {"top1": "top-1"}, ("lists", "annotations"),
                ("pytorchvideo.data", "pytorchvideo.data.encoded_video")),
)
TASKS: dict[str, Declaration] = {d.name: d for d in DECLARATIONS}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
# The task whose settings say how a clip is cut from a video file (the shared multi-task pass's input):
# its ``tasks`` module has ``clip_from_file(path, cfg)``.
CLIP_TASK = "k400"


def declaration(name: str) -> Declaration:
    """The declaration of task ``name``; a KeyError naming the known tasks otherwise."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    return TASKS[name]


def column_name(task: str, metric: str) -> str:
    """The table column of a task's metric: ``<task>_<metric>``."""
    return f"{task}_{metric}"


def column_of(column: str) -> tuple[Declaration | None, str]:
    """``coco_box_ap`` -> (the coco declaration, ``box_ap``); (None, column) for other names."""
    task, _, metric = column.partition("_")
    return TASKS.get(task), metric


@dataclass(frozen=True)
class Task:
    """How one task plugs into the training loop, the head job's evaluation and the shared pass.

    Every callable takes the job's task section (``cfg``: the profile's ``<task>`` block with its
    schema defaults, minus ``resources``).
    """

    declaration: Declaration
    datasets: Callable[[Path, dict], tuple["Dataset", Any]]           # (data root, cfg) -> train, val
    build_head: Callable[["BackboneAdapter", Any, dict, "CheckpointEntry"], "nn.Module"]
    loss: Callable[["nn.Module", Any], dict[str, "torch.Tensor"]]
    collate: Callable
    evaluate: Callable[["nn.Module", Any, dict, "torch.device"], tuple[dict[str, float], Any]]
    # (model, val set, cfg, device, evaluate's second result, out dir, count) -> the PNGs written
    pictures: Callable[["nn.Module", Any, dict, "torch.device", Any, Path, int], list[Path]]
    # the shared multi-task pass (frozenrep.multitask)
    class_names: Callable[[Path], list[str]]                           # from the dataset's small files
    num_classes: Callable[[list[str]], int]                            # the head's outputs for those names
    levels: Callable[["nn.Module"], "Levels"]                          # what the head reads its levels from
    check_frames: Callable[["nn.Module", int], None]                   # refuse a clip the head cannot take
    shared_predict: Callable[["nn.Module", "torch.Tensor"], Any]       # normalised frames (T,3,H,W) -> output
    summarise: Callable[[Any, list[str], float], dict[str, Any]]       # output, names, score threshold -> JSON

    @property
    def name(self) -> str:
        return self.declaration.name

    @property
    def table_metrics(self) -> tuple[str, ...]:
        return tuple(self.declaration.metrics)


def get_task(name: str) -> Task:
    """Task ``name``'s behaviour (``frozenrep.tasks.<name>.TASK``)."""
    return declaration(name).module("tasks").TASK
