"""COCO 2017 instances: download, layout checks and the Dataset.

On disk (real, and as :mod:`frozenrep.synthetic.coco` writes it)::

    <root>/annotations/instances_train2017.json   <root>/train2017/*.jpg
    <root>/annotations/instances_val2017.json     <root>/val2017/*.jpg
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from frozenrep.data import DatasetError, download_and_extract
from frozenrep.io import file_digest
from frozenrep.progress import log

SPLITS = ("train", "val")
ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "segmentation")


def annotation_file(root: str | Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}2017.json"


def image_dir(root: str | Path, split: str) -> Path:
    return Path(root) / f"{split}2017"


def read_instances(path: Path) -> dict[str, Any]:
    """An instances file's JSON, with its three lists; a DatasetError naming the file otherwise."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON ({err}); fetch or generate it again.") from err
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path} is not a COCO instances file: key {key!r} is missing or not a list.")
    return data


@dataclass
class CheckedAnnotations:
    """What :func:`check_annotations` found: the records left out of the training targets and why,
    and the polygons kept of annotations that lost some."""

    skipped: list[tuple[str, str]] = field(default_factory=list)   # (record, reason)
    left_out: set[int] = field(default_factory=set)                  # annotation ids
    polygons: dict[int, list] = field(default_factory=dict)          # annotation id -> polygons kept


def check_annotations(data: dict[str, Any], path: Path) -> CheckedAnnotations:
    """Check every annotation of an instances file.

    An annotation that lacks a required key, or names a category or an image the file does not
    have, is an error naming it: the file is not what COCO tools read. As the COCO tools do for
    training, a box without area (width or height at most 1 px) and a polygon of fewer than three
    points are left out and counted: the polygon is dropped from its annotation, and an annotation
    with no polygon left is left out. Evaluation scores against the file as it is.
    """
    def where(k: int, ann: dict[str, Any]) -> str:
        return f"{path}: annotation {ann.get('id', f'#{k}')} (image {ann.get('image_id', '?')})"

    categories = {c.get("id") for c in data["categories"]}
    images = {i.get("id") for i in data["images"]}
    checked = CheckedAnnotations()
    for k, ann in enumerate(data["annotations"]):
        missing = [key for key in ANNOTATION_KEYS if key not in ann]
        if missing:
            raise DatasetError(f"{where(k, ann)} lacks the key(s) {missing}; a COCO instance annotation has "
                               f"{list(ANNOTATION_KEYS)}. Fix or remove the record.")
        if ann["category_id"] not in categories:
            raise DatasetError(f"{where(k, ann)} has category_id {ann['category_id']}, which is not in the file's "
                               f"categories (ids {sorted(categories)}). Fix the record or add the category.")
        if ann["image_id"] not in images:
            raise DatasetError(f"{where(k, ann)} names image id {ann['image_id']}, which is not in the file's images. "
                               "Fix or remove the record.")
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise DatasetError(f"{where(k, ann)} has bbox {box!r}; COCO boxes are [x, y, width, height].")
        if box[2] <= 1 or box[3] <= 1:
            checked.skipped.append((where(k, ann), f"box {box} has no area (width or height at most 1 px): left out"))
            checked.left_out.add(ann["id"])
            continue
        if isinstance(ann["segmentation"], list):  # polygons (a dict is RLE)
            kept = [poly for poly in ann["segmentation"] if len(poly) >= 6 and len(poly) % 2 == 0]
            for poly in ann["segmentation"]:
                if len(poly) < 6 or len(poly) % 2:
                    checked.skipped.append((where(k, ann), f"polygon of {len(poly)} coordinates (fewer than three "
                                                           "points): dropped"))
            if not kept:
                checked.skipped.append((where(k, ann), "no polygon of three points or more: left out"))
                checked.left_out.add(ann["id"])
            elif len(kept) < len(ann["segmentation"]):
                checked.polygons[ann["id"]] = kept
    return checked


def verify_layout(root: str | Path, check_images: int = 5) -> dict[str, Any]:
    """Check that ``root`` holds COCO 2017 instances; return a summary or raise DatasetError."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"COCO root {root} does not exist. Set datasets.coco.root to a COCO 2017 copy "
                           "or use source: download / generate.")
    summary: dict[str, Any] = {"root": str(root), "splits": {}}
    for split in SPLITS:
        ann, imgs = annotation_file(root, split), image_dir(root, split)
        if not ann.is_file():
            raise DatasetError(f"{root} is not a COCO 2017 copy: {ann} is missing "
                               "(expected annotations/instances_{train,val}2017.json and train2017/, val2017/).")
        if not imgs.is_dir():
            raise DatasetError(f"{root} is not a COCO 2017 copy: image folder {imgs} is missing.")
        data = read_instances(ann)
        skipped = check_annotations(data, ann).skipped
        for image in data["images"][:check_images]:
            if not (imgs / image["file_name"]).is_file():
                raise DatasetError(f"{ann} names image {image['file_name']} (id {image['id']}), "
                                   f"but {imgs / image['file_name']} does not exist.")
        summary["splits"][split] = {"images": len(data["images"]), "annotations": len(data["annotations"]),
                                    "annotation_file": str(ann), "sha256": file_digest(ann),
                                    "skipped_annotations": [{"record": r, "reason": why} for r, why in skipped]}
        if skipped:
            log.warning("coco %s: %d annotation(s) or polygon(s) left out (listed in the manifest)", split,
                        len(skipped))
        summary["categories"] = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    return summary


def download(root: str | Path, settings: dict[str, Any], **fetch_kwargs: Any) -> None:
    """Fetch the official archives (md5-checked, resumable) and extract them safely into ``root``."""
    download_and_extract(root, settings["files"], settings["downloads"], verify_layout, **fetch_kwargs)


class CocoDetection(Dataset):
    """COCO instances for torchvision's Mask R-CNN: ``(image, target)`` with boxes, labels, masks.

    ``labels`` are contiguous (1..K in the order of sorted category ids; 0 is background).
    Crowd annotations are left out of the targets, and so are the records :func:`check_annotations`
    leaves out (listed in ``skipped``). Index with ``i`` or with
    ``(i, seed)``; with ``train=True`` the seed decides the horizontal flip, so that a run is
    reproducible whatever the worker layout.
    """

    def __init__(self, root: str | Path, split: str, train: bool = False, hflip_prob: float = 0.5) -> None:
        from pycocotools.coco import COCO

        self.root, self.split, self.train, self.hflip_prob = Path(root), split, train, hflip_prob
        ann = annotation_file(root, split)
        if not ann.is_file():
            raise DatasetError(f"{ann} does not exist; run the dataset rule (snakemake data/coco.manifest.json).")
        data = read_instances(ann)
        self.checked = check_annotations(data, ann)
        if self.checked.skipped:
            log.warning("coco %s: %d annotation(s) or polygon(s) left out of the training targets", split,
                        len(self.checked.skipped))
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO()
            self.coco.dataset = data
            self.coco.createIndex()
        self.ids = sorted(self.coco.imgs)
        self.cat_ids = sorted(self.coco.getCatIds())
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.category_of = {i + 1: cid for i, cid in enumerate(self.cat_ids)}

    @property
    def num_classes(self) -> int:
        """Number of object classes plus one for the background."""
        return len(self.cat_ids) + 1

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(record, reason) of every annotation or polygon left out: reported in the log, the metrics file and MLflow."""
        return self.checked.skipped

    def load_image(self, image_id: int) -> torch.Tensor:
        info = self.coco.imgs[image_id]
        path = image_dir(self.root, self.split) / info["file_name"]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except FileNotFoundError as err:
            raise DatasetError(f"image {path} (id {image_id}, listed in {annotation_file(self.root, self.split)}) "
                               "does not exist; the dataset copy is incomplete.") from err
        except (UnidentifiedImageError, OSError) as err:
            raise DatasetError(f"image {path} (id {image_id}) cannot be decoded ({err}); "
                               "replace the file or re-create the dataset.") from err
        return TF.to_dtype(TF.to_image(image), torch.float32, scale=True)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        image_id = self.ids[index]
        image = self.load_image(image_id)
        height, width = image.shape[-2:]
        anns = [a if a["id"] not in self.checked.polygons else {**a, "segmentation": self.checked.polygons[a["id"]]}
                for a in self.coco.imgToAnns.get(image_id, [])
                if not a.get("iscrowd", 0) and a["id"] not in self.checked.left_out]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        masks = (torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns])) if anns
                 else torch.zeros((0, height, width), dtype=torch.uint8))
        boxes = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))
        masks = tv_tensors.Mask(masks)
        if self.train and torch.rand((), generator=torch.Generator().manual_seed(seed)).item() < self.hflip_prob:
            image, boxes, masks = TF.horizontal_flip(image), TF.horizontal_flip(boxes), TF.horizontal_flip(masks)
        target = {
            "boxes": boxes.as_subclass(torch.Tensor),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": masks.as_subclass(torch.Tensor),
            "image_id": image_id,
        }
        return image, target


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Keep images and targets as lists: Mask R-CNN batches images of different sizes itself."""
    images, targets = zip(*batch)
    return list(images), list(targets)
