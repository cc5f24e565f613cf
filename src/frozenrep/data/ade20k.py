"""ADE20K (SceneParsing, ADEChallengeData2016): download, layout checks, reading.

On disk (real, and as :mod:`frozenrep.synthetic.ade20k` writes it)::

    <root>/images/{training,validation}/ADE_{train,val}_00000001.jpg
    <root>/annotations/{training,validation}/ADE_{train,val}_00000001.png   (uint8 class ids)
    <root>/objectInfo150.txt                                                 (class names)

Label conventions, as in the benchmark: value 0 is "other" and is ignored; values 1..K become
classes 0..K-1 (K = 150 for the real data); training and scoring use ignore index 255.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from frozenrep.data import DatasetError, download_and_extract
from frozenrep.io import file_digest
from frozenrep.progress import log
from frozenrep.randomness import seeded_rng

IGNORE_INDEX = 255


SPLIT_DIRS = {"train": "training", "val": "validation"}


OBJECT_INFO = "objectInfo150.txt"


def image_path(root: Path, split: str, stem: str) -> Path:
    return Path(root) / "images" / SPLIT_DIRS[split] / f"{stem}.jpg"


def mask_path(root: Path, split: str, stem: str) -> Path:
    return Path(root) / "annotations" / SPLIT_DIRS[split] / f"{stem}.png"


def jpeg_truncated(path: Path, tail: int = 1024) -> bool:
    """Whether a JPEG file lacks its end-of-image marker near its end: a cut download or copy.
    Reads the last ``tail`` bytes only (decoding every image when a dataset opens would cost minutes)."""
    with open(path, "rb") as handle:
        handle.seek(max(path.stat().st_size - tail, 0))
        return b"\xff\xd9" not in handle.read()


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
                image_size, image_format = im.size, im.format
        except (UnidentifiedImageError, OSError) as err:
            return f"image {img} cannot be decoded ({err})."
        if image_format == "JPEG" and jpeg_truncated(img):
            return f"image {img} is truncated (no JPEG end-of-image marker)."
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
