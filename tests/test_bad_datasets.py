"""Bad datasets, every case of the three tasks in one place: each is named (file, sample, row) with what
to do, or, where the task allows it (ADE20K/Kinetics ``on_bad_sample: skip``), skipped, counted and listed.
Nothing here may leave a half-written dataset behind."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from frozenrep.data import ade20k, coco, k400
from frozenrep.data.ade20k import ADE20KSegmentation, mask_path
from frozenrep.data.coco import CocoDetection, DatasetError
from frozenrep.data.k400 import KineticsIndex, annotation_csv, class_names, read_csv, video_path
from frozenrep.synthetic import ade20k as synthetic_ade20k
from frozenrep.synthetic import k400 as synthetic_k400


@pytest.fixture(scope="module")
def tiny_ade(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade") / "ade20k"
    synthetic_ade20k.generate(root, num_train=6, num_val=4, image_size=64, num_classes=4, max_regions=3, seed=0)
    return root


@pytest.fixture(scope="module")
def tiny_k400(tmp_path_factory):
    root = tmp_path_factory.mktemp("k400") / "k400"
    synthetic_k400.generate(root, num_train=8, num_val=4, num_classes=4, image_size=32, num_frames=16, fps=16, seed=0)
    return root


# COCO: a layout or file problem is an error naming the file; there is no skipping for detection.

def test_coco_layout_errors_name_the_file(tmp_path, tiny_coco):
    with pytest.raises(DatasetError, match="does not exist"):
        coco.verify_layout(tmp_path / "nowhere")
    copy = tmp_path / "coco"
    shutil.copytree(tiny_coco, copy)
    (copy / "val2017").rename(copy / "val")
    with pytest.raises(DatasetError, match="val2017 is missing"):
        coco.verify_layout(copy)
    (copy / "val").rename(copy / "val2017")
    coco.annotation_file(copy, "val").write_text("{not json")
    with pytest.raises(DatasetError, match="instances_val2017.json is not valid JSON"):
        coco.verify_layout(copy)
    shutil.copy(coco.annotation_file(tiny_coco, "val"), coco.annotation_file(copy, "val"))
    first = sorted((copy / "val2017").iterdir())[0]
    first.unlink()
    with pytest.raises(DatasetError, match=first.name):
        coco.verify_layout(copy)


def test_coco_unreadable_image_names_the_file(tmp_path, tiny_coco):
    copy = tmp_path / "coco"
    shutil.copytree(tiny_coco, copy)
    ds = CocoDetection(copy, "val")
    victim = copy / "val2017" / ds.coco.imgs[ds.ids[0]]["file_name"]
    victim.write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(DatasetError, match=f"{victim.name}.*cannot be decoded"):
        ds[0]
    victim.unlink()
    with pytest.raises(DatasetError, match=f"{victim.name}.*does not exist"):
        ds[0]


def test_coco_download_refuses_wrong_md5(tmp_path, http_server):
    url = http_server.add("/zips/val2017.zip", b"PK not really")
    with pytest.raises(Exception, match="md5 mismatch"):
        coco.download(tmp_path / "coco", {"files": [{"url": url, "md5": "0" * 32}], "downloads": tmp_path / "dl"})
    assert not (tmp_path / "coco").exists()


# ADE20K

def test_ade20k_layout_errors_name_the_folder(tmp_path, tiny_ade):
    with pytest.raises(DatasetError, match="does not exist. Set datasets.ade20k.root"):
        ade20k.verify_layout(tmp_path / "nowhere")
    root = tmp_path / "ade"
    shutil.copytree(tiny_ade, root)
    (root / "objectInfo150.txt").unlink()
    with pytest.raises(DatasetError, match="objectInfo150.txt is missing"):
        ade20k.verify_layout(root)
    shutil.copy(tiny_ade / "objectInfo150.txt", root / "objectInfo150.txt")
    shutil.rmtree(root / "annotations" / "validation")
    with pytest.raises(DatasetError, match=r"annotations/validation is missing"):
        ade20k.verify_layout(root)


def corrupt_ade_mask(root, how):
    ds = ADE20KSegmentation(root, "val")
    victim = mask_path(root, "val", ds.stems[1])
    if how == "size":
        Image.new("L", (32, 64)).save(victim)
    elif how == "label":
        arr = np.array(Image.open(victim))
        arr[0, 0] = 200
        Image.fromarray(arr).save(victim)
    elif how == "missing":
        victim.unlink()
    elif how == "corrupt":
        victim.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return victim


@pytest.mark.parametrize("how, message", [
    ("size", r"is 32x64 but its image .* is 64x64"),
    ("label", r"label\(s\) \[200\] outside 0..4"),
    ("missing", r"does not exist"),
    ("corrupt", r"cannot be decoded"),
])
def test_ade20k_bad_masks_are_named_or_skipped_and_counted(tmp_path, tiny_ade, how, message):
    root = tmp_path / "ade"
    shutil.copytree(tiny_ade, root)
    victim = corrupt_ade_mask(root, how)
    with pytest.raises(DatasetError, match=message) as info:
        ADE20KSegmentation(root, "val")
    assert victim.name in str(info.value) and "on_bad_sample: skip" in str(info.value)
    ds = ADE20KSegmentation(root, "val", on_bad_sample="skip")
    assert len(ds) == 3 and len(ds.skipped) == 1 and ds.skipped[0][0] == str(victim)
    assert all(stem != victim.stem for stem in ds.stems)


# Kinetics-400

def test_k400_layout_errors_name_the_file(tmp_path, tiny_k400):
    with pytest.raises(DatasetError, match="does not exist. Set datasets.k400.root"):
        k400.verify_layout(tmp_path / "nowhere")
    root = tmp_path / "k400"
    shutil.copytree(tiny_k400, root)
    csv_path = annotation_csv(root, "val")
    csv_path.write_text("name,youtube_id\nx,y\n")
    with pytest.raises(DatasetError, match=r"val.csv lacks the column\(s\) \['label', 'time_end', 'time_start'\]"):
        k400.verify_layout(root)
    csv_path.unlink()
    with pytest.raises(DatasetError, match="val.csv is missing"):
        k400.verify_layout(root)
    shutil.copy(annotation_csv(tiny_k400, "val"), csv_path)
    shutil.rmtree(root / "videos" / "train")
    with pytest.raises(DatasetError, match="videos/train is missing"):
        k400.verify_layout(root)


def corrupt_k400(root):
    """A truncated video, a missing one, a short one, an unknown class folder and csv row."""
    rows = read_csv(annotation_csv(root, "val"))
    truncated = video_path(root, "val", rows[0])
    truncated.write_bytes(truncated.read_bytes()[:300])
    missing = video_path(root, "val", rows[1])
    missing.unlink()
    short = video_path(root, "val", rows[2])
    synthetic_k400.write_video(short, [torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()] * 2, fps=16)
    (root / "videos" / "val" / "juggling").mkdir()
    with open(annotation_csv(root, "val"), "a") as handle:
        handle.write("juggling,abc,0,1,val,0\n")
    return truncated, missing, short


def test_k400_bad_videos_are_counted_listed_or_named(tmp_path, tiny_k400):
    root = tmp_path / "k400"
    shutil.copytree(tiny_k400, root)
    truncated, missing, short = corrupt_k400(root)
    classes = class_names(root)
    index = KineticsIndex(root, "val", classes, 0.5, on_bad_sample="skip")
    reasons = dict(index.skipped)
    assert len(index.videos) == 1 and len(index.skipped) == 5
    assert reasons[str(missing)] == "missing"
    assert reasons[str(truncated)].startswith("unreadable")
    assert reasons[str(short)].startswith("shorter than one clip")
    assert "juggling" in reasons[str(root / "videos" / "val" / "juggling")]
    assert reasons[f"{annotation_csv(root, 'val')}:6"] == "unknown class 'juggling'"
    with pytest.raises(DatasetError, match="juggling"):
        KineticsIndex(root, "val", classes, 0.5, on_bad_sample="error")
