"""ADE20K (SceneParsing, ADEChallengeData2016): generation in the true format, download, reading.

On disk (generated and real)::

    <root>/images/{training,validation}/ADE_{train,val}_00000001.jpg
    <root>/annotations/{training,validation}/ADE_{train,val}_00000001.png   (uint8 class ids)
    <root>/objectInfo150.txt                                                 (class names)

Label conventions, as in the benchmark: value 0 is "other" and is ignored; values 1..K become
classes 0..K-1 (K = 150 for the real data); training and scoring use ignore index 255.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from frozenrep.data import download_and_extract
from frozenrep.data.coco import DatasetError
from frozenrep.data.shapes import SHAPES, background, shape_polygon
from frozenrep.io import file_digest, write_text_atomic
from frozenrep.progress import Progress, log
from frozenrep.randomness import seeded_rng

IGNORE_INDEX = 255
SPLIT_DIRS = {"train": "training", "val": "validation"}
TEXTURES = ("h-stripes", "v-stripes", "diagonal", "checker", "dots", "rings", "crosshatch", "grain")
OBJECT_INFO = "objectInfo150.txt"


def image_path(root: Path, split: str, stem: str) -> Path:
    return Path(root) / "images" / SPLIT_DIRS[split] / f"{stem}.jpg"


def mask_path(root: Path, split: str, stem: str) -> Path:
    return Path(root) / "annotations" / SPLIT_DIRS[split] / f"{stem}.png"


def read_class_names(root: Path) -> list[str]:
    """Class names from objectInfo150.txt (header line, then ``idx ratio train val name``)."""
    path = Path(root) / OBJECT_INFO
    if not path.is_file():
        raise DatasetError(f"{path} is missing: an ADE20K copy ships objectInfo150.txt beside images/ and annotations/.")
    names = []
    for line in path.read_text().splitlines()[1:]:
        parts = line.split("\t") if "\t" in line else line.split(None, 4)
        if len(parts) >= 5:
            names.append(parts[4].strip())
    if not names:
        raise DatasetError(f"{path} lists no classes.")
    return names


def _texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = 8.0  # one scale for every class: the pattern, not its size, tells classes apart
    phase = rng.uniform(0, period)
    if kind == "h-stripes":
        pattern = ((yy + phase) % period) < period / 2
    elif kind == "v-stripes":
        pattern = ((xx + phase) % period) < period / 2
    elif kind == "diagonal":
        pattern = ((xx + yy + phase) % period) < period / 2
    elif kind == "checker":
        pattern = (((xx + phase) // (period / 2)) + ((yy + phase) // (period / 2))) % 2 == 0
    elif kind == "dots":
        pattern = (((xx + phase) % period) - period / 2) ** 2 + (((yy + phase) % period) - period / 2) ** 2 < (period / 3.5) ** 2
    elif kind == "rings":
        cx, cy = rng.uniform(0, size, 2)
        pattern = (np.hypot(xx - cx, yy - cy) % period) < period / 2
    elif kind == "crosshatch":
        pattern = (((xx + phase) % period) < period / 4) | (((yy + phase) % period) < period / 4)
    elif kind == "grain":
        pattern = rng.random((size, size)) < 0.5
    else:
        raise ValueError(f"unknown texture {kind!r}")
    c0 = rng.uniform(0, 255, 3)  # random colours, always in high contrast
    return np.where(pattern[..., None], c0, 255 - c0).astype(np.uint8)


def generate(root: str | Path, *, num_train: int, num_val: int, image_size: int, num_classes: int,
             max_regions: int, seed: int) -> None:
    """Write an ADE20K-format dataset whose region classes are textures (label 0 = other)."""
    if not 1 <= num_classes <= len(TEXTURES):
        raise ValueError(f"num_classes must be between 1 and {len(TEXTURES)}, got {num_classes}")
    root = Path(root)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for split_index, (split, count, prefix) in enumerate((("train", num_train, "ADE_train"),
                                                          ("val", num_val, "ADE_val"))):
        rng = np.random.default_rng([seed, 100 + split_index])
        for directory in ("images", "annotations"):
            (tmp / directory / SPLIT_DIRS[split]).mkdir(parents=True)
        with Progress(count, f"generate ade20k {split}", unit="img") as progress:
            for k in range(count):
                image = np.array(background(rng, image_size))
                label = Image.new("L", (image_size, image_size), 0)
                for _ in range(int(rng.integers(1, max_regions + 1))):
                    cls = int(rng.integers(num_classes))
                    radius = rng.uniform(image_size / 6, image_size / 2.5)
                    cx, cy = rng.uniform(0, image_size, 2)
                    verts = shape_polygon(SHAPES[int(rng.integers(len(SHAPES)))], cx, cy, radius,
                                          rng.uniform(0, 2 * math.pi))
                    region = Image.new("L", (image_size, image_size), 0)
                    ImageDraw.Draw(region).polygon(verts, fill=1)
                    inside = np.array(region, dtype=bool)
                    image[inside] = _texture(TEXTURES[cls], image_size, rng)[inside]
                    ImageDraw.Draw(label).polygon(verts, fill=cls + 1)
                stem = f"{prefix}_{k + 1:08d}"
                Image.fromarray(image).save(image_path(tmp, split, stem), quality=95)
                label.save(mask_path(tmp, split, stem))
                progress.update()
    lines = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i + 1}\t0\t0\t0\t{name}" for i, name in
                                                   enumerate(TEXTURES[:num_classes])]
    write_text_atomic(tmp / OBJECT_INFO, "\n".join(lines) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)


def verify_layout(root: str | Path) -> dict[str, Any]:
    """Check the ADEChallengeData2016 layout; return a summary or raise DatasetError naming what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"ADE20K root {root} does not exist. Set datasets.ade20k.root to the folder holding "
                           "images/ and annotations/, or use source: download / generate.")
    summary: dict[str, Any] = {"root": str(root), "splits": {}, "classes": read_class_names(root)}
    for split, directory in SPLIT_DIRS.items():
        images, masks = root / "images" / directory, root / "annotations" / directory
        for folder in (images, masks):
            if not folder.is_dir():
                raise DatasetError(f"{root} is not an ADE20K copy: {folder} is missing.")
        summary["splits"][split] = {"images": sum(1 for _ in images.glob("*.jpg")),
                                    "annotations": sum(1 for _ in masks.glob("*.png"))}
        if summary["splits"][split]["images"] == 0:
            raise DatasetError(f"{images} holds no .jpg images.")
    summary["sha256"] = file_digest(root / OBJECT_INFO)
    return summary


def download(root: str | Path, settings: dict[str, Any], **fetch_kwargs: Any) -> None:
    """Fetch ADEChallengeData2016.zip (md5-checked, resumable) and extract it safely into ``root``."""
    download_and_extract(root, settings["files"], settings["downloads"], verify_layout, inner_dir="ADEChallengeData2016", **fetch_kwargs)


class ADE20KSegmentation(Dataset):
    """Image and label map (classes 0..K-1, 255 ignored) for one split.

    Every pair is checked when the dataset is opened: a missing or unreadable mask, a mask whose
    size differs from its image, or a label outside 0..K that is not 255. With
    ``on_bad_sample="error"`` the first such sample raises DatasetError naming the file; with
    ``"skip"`` it is left out and listed in ``skipped`` (file, reason), never silently.
    Training samples are augmented as the paper's base framework does (random resize with ratio
    0.5-2.0, random crop to ``crop_size``, horizontal flip), seeded per sample.
    """

    def __init__(self, root: str | Path, split: str, *, train: bool = False, crop_size: int = 512,
                 scale: tuple[int, int] = (512, 2048), ratio_range: tuple[float, float] = (0.5, 2.0),
                 on_bad_sample: str = "error") -> None:
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
        self.root, self.split, self.train, self.crop_size = Path(root), split, train, crop_size
        self.class_names = read_class_names(self.root)
        self.num_classes = len(self.class_names)
        folder = self.root / "images" / SPLIT_DIRS[split]
        if not folder.is_dir():
            raise DatasetError(f"{folder} does not exist; run the dataset rule (snakemake data/ade20k.manifest.json).")
        self.skipped: list[tuple[str, str]] = []
        self.stems: list[str] = []
        for image in sorted(folder.glob("*.jpg")):
            problem = self._check(image.stem)
            if problem is None:
                self.stems.append(image.stem)
            elif on_bad_sample == "error":
                raise DatasetError(problem + " Fix or remove the sample, or set on_bad_sample: skip.")
            else:
                self.skipped.append((str(mask_path(self.root, split, image.stem)), problem))
                log.warning("skipping bad sample: %s", problem)
        self.augment = v2.Compose([
            v2.ScaleJitter(target_size=scale, scale_range=ratio_range, antialias=True),
            v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
            v2.RandomHorizontalFlip(0.5),
        ]) if train else None

    def _check(self, stem: str) -> str | None:
        img, msk = image_path(self.root, self.split, stem), mask_path(self.root, self.split, stem)
        if not msk.is_file():
            return f"mask {msk} for image {img.name} does not exist."
        try:
            with Image.open(img) as im:
                image_size = im.size
        except (UnidentifiedImageError, OSError) as err:
            return f"image {img} cannot be decoded ({err})."
        try:
            with Image.open(msk) as m:
                m.load()
                labels = np.asarray(m)
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            return f"mask {msk} cannot be decoded ({err})."
        if labels.ndim != 2:
            return f"mask {msk} has {labels.ndim} dimensions; ADE20K masks are single-channel class ids."
        if (labels.shape[1], labels.shape[0]) != image_size:
            return (f"mask {msk} is {labels.shape[1]}x{labels.shape[0]} but its image {img.name} is "
                    f"{image_size[0]}x{image_size[1]}.")
        bad = np.setdiff1d(np.unique(labels), np.r_[np.arange(self.num_classes + 1), IGNORE_INDEX])
        if bad.size:
            return (f"mask {msk} has label(s) {bad.tolist()[:5]} outside 0..{self.num_classes} "
                    f"(and 255), the classes of {OBJECT_INFO}.")
        return None

    def __len__(self) -> int:
        return len(self.stems)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Original image (uint8 CHW) and label map (int64 HW, shifted: 0 -> 255, k -> k-1)."""
        stem = self.stems[index]
        with Image.open(image_path(self.root, self.split, stem)) as im:
            image = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
        with Image.open(mask_path(self.root, self.split, stem)) as m:
            raw = torch.from_numpy(np.array(m)).long()
        labels = raw - 1
        labels[(raw == 0) | (raw == IGNORE_INDEX)] = IGNORE_INDEX
        return image, labels

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        image, labels = self.load(index)
        if self.augment is not None:
            with seeded_rng(seed):
                image, mask = self.augment(tv_tensors.Image(image), tv_tensors.Mask(labels))
            image, labels = image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        return image.float() / 255.0, labels


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Training crops all have the crop size: stack them."""
    images, labels = zip(*batch)
    return torch.stack(images), torch.stack(labels)
