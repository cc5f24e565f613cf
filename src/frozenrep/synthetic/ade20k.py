"""Generated ADE20K (ADEChallengeData2016 layout): regions whose class is their texture (embedded default)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from frozenrep.data.ade20k import OBJECT_INFO, SPLIT_DIRS, image_path, mask_path
from frozenrep.io import write_text_atomic
from frozenrep.progress import Progress
from frozenrep.synthetic.shapes import SHAPES, TEXTURES, background, shape_polygon, texture_pattern


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
                image = background(rng, image_size)
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
                    image[inside] = texture_pattern(TEXTURES[cls], image_size, rng)[inside]
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
