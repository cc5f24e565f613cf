"""Generated COCO 2017 instances: shape scenes written in the true format (embedded default)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from frozenrep.data.coco import annotation_file, image_dir
from frozenrep.io import write_json_atomic
from frozenrep.progress import Progress
from frozenrep.synthetic.shapes import SHAPES, draw_scene


def generate(root: str | Path, *, num_train: int, num_val: int, image_size: int, num_categories: int,
             max_objects: int, min_radius: float, max_radius: float, seed: int) -> None:
    """Write a COCO-format dataset of shape scenes to ``root`` (deterministic by ``seed``).

    The dataset is built in a temporary directory beside ``root`` and renamed into place whole.
    """
    root = Path(root)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    categories = [{"id": i + 1, "name": SHAPES[i], "supercategory": "shape"} for i in range(num_categories)]
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        rng = np.random.default_rng([seed, split_index])
        images, annotations = [], []
        image_dir(tmp, split).mkdir(parents=True)
        with Progress(count, f"generate coco {split}", unit="img") as progress:
            for k in range(count):
                image_id = k + 1
                n = int(rng.integers(1, max_objects + 1))
                image, shapes = draw_scene(rng, image_size, n, num_categories, min_radius, max_radius)
                file_name = f"{image_id:012d}.jpg"
                image.save(image_dir(tmp, split) / file_name, quality=95)
                images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
                for shape in shapes:
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": image_id, "category_id": shape.category + 1,
                        "segmentation": [shape.polygon], "bbox": list(shape.bbox),
                        "area": float(_polygon_area(shape.polygon)), "iscrowd": 0,
                    })
                progress.update()
        write_json_atomic(annotation_file(tmp, split), {
            "info": {"description": f"frozenrep generated shapes ({split}), seed {seed}", "version": "1.0"},
            "licenses": [], "images": images, "annotations": annotations, "categories": categories,
        })
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)


def _polygon_area(flat: list[float]) -> float:
    xs, ys = np.array(flat[0::2]), np.array(flat[1::2])
    return 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
