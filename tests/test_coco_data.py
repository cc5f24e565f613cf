"""COCO data: the generator writes true COCO, the reader follows its conventions, bad input is named."""

import hashlib
import json
import zipfile

import numpy as np
import torch

from frozenrep.data import coco
from frozenrep.data.coco import CocoDetection
from frozenrep.synthetic import coco as synthetic_coco


def tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def gen(root, seed=0):
    synthetic_coco.generate(root, num_train=6, num_val=3, image_size=64, num_categories=3, max_objects=3,
                  min_radius=6, max_radius=14, seed=seed)


def test_generation_is_deterministic_by_seed(tmp_path):
    gen(tmp_path / "a"), gen(tmp_path / "b"), gen(tmp_path / "c", seed=1)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")
    assert not (tmp_path / "a.tmp").exists()


def test_generated_data_is_valid_coco(tiny_coco):
    summary = coco.verify_layout(tiny_coco)
    assert summary["splits"]["train"]["images"] == 12 and summary["splits"]["val"]["images"] == 6
    assert summary["categories"] == ["circle", "square", "triangle"]
    data = json.loads(coco.annotation_file(tiny_coco, "train").read_text())
    ds = CocoDetection(tiny_coco, "train")
    for ann in data["annotations"][:10]:
        mask = ds.coco.annToMask(ann)
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert mask.sum() > 0.5 * ann["area"]  # the polygon rasterises to about its area
        assert xs.min() >= int(x) - 1 and xs.max() <= x + w + 1 and ys.min() >= int(y) - 1 and ys.max() <= y + h + 1


def test_dataset_targets_and_seeded_flip(tiny_coco):
    ds = CocoDetection(tiny_coco, "train", train=True, hflip_prob=1.0)
    plain = CocoDetection(tiny_coco, "train", train=False)
    image, target = plain[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert target["boxes"].shape == (len(target["labels"]), 4) and target["masks"].shape[1:] == (64, 64)
    assert set(target["labels"].tolist()) <= {1, 2, 3}
    flipped_image, flipped = ds[(0, 123)]
    assert torch.equal(flipped_image, image.flip(-1))
    assert torch.equal(flipped["masks"], target["masks"].flip(-1))
    assert torch.allclose(flipped["boxes"][:, 0], 64 - target["boxes"][:, 2])
    # with a coin-flip augmentation, a sample seed decides it: the same seed gives the same view,
    # and over seeds both views occur
    coin = CocoDetection(tiny_coco, "train", train=True, hflip_prob=0.5)
    views = {seed: coin[(0, seed)][0] for seed in range(16)}
    assert all(torch.equal(views[seed], coin[(0, seed)][0]) for seed in views)
    flips = [torch.equal(view, image.flip(-1)) for view in views.values()]
    assert any(flips) and not all(flips)
    assert all(flip or torch.equal(view, image) for flip, view in zip(flips, views.values()))


def test_download_from_loopback_server(tmp_path, tiny_coco, http_server):
    files = []
    for name, folders in (("val2017.zip", ["val2017"]), ("train2017.zip", ["train2017"]),
                          ("annotations_trainval2017.zip", ["annotations"])):
        archive = tmp_path / name
        with zipfile.ZipFile(archive, "w") as zf:
            for folder in folders:
                for path in sorted((tiny_coco / folder).iterdir()):
                    zf.write(path, f"{folder}/{path.name}")
        body = archive.read_bytes()
        url = http_server.add(f"/zips/{name}", body, cut_after=len(body) // 2, cut_times=1)
        files.append({"url": url, "md5": hashlib.md5(body).hexdigest()})
    root = tmp_path / "data" / "coco"
    coco.download(root, {"files": files, "downloads": tmp_path / "downloads"}, backoff=0.01)
    assert coco.verify_layout(root)["splits"]["train"]["images"] == 12
    assert tree_digest(root / "train2017") == tree_digest(tiny_coco / "train2017")
    # a second call finds the verified archives and does not download again
    counts = {p: len(r.requests) for p, r in http_server.routes.items()}
    coco.download(root, {"files": files, "downloads": tmp_path / "downloads"})
    assert counts == {p: len(r.requests) for p, r in http_server.routes.items()}
