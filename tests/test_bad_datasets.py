"""Bad datasets, every case of the three tasks in one place: each is named (file, sample, row) with what
to do, or, where the task allows it (ADE20K/Kinetics ``on_bad_sample: skip``), skipped, counted and listed.
Nothing here may leave a half-written dataset behind."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from frozenrep.data import ade20k, coco, k400
from frozenrep.data.ade20k import ADE20KSegmentation, image_path, mask_path
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


# COCO: a layout, file or record problem is an error naming it; boxes without area and short polygons
# are left out of the training targets and counted (tests at the end of this module).

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
    elif how == "truncated image":  # a cut copy: the JPEG header decodes, the rest is gone
        victim = image_path(root, "val", ds.stems[1])
        data = victim.read_bytes()
        victim.write_bytes(data[:len(data) * 3 // 4])
    elif how == "image size":  # the image, not the mask, has another size
        victim = image_path(root, "val", ds.stems[1])
        Image.new("RGB", (48, 64)).save(victim, quality=95)
    return victim


@pytest.mark.parametrize("how, message", [
    ("size", r"is 32x64 but its image .* is 64x64"),
    ("label", r"label\(s\) \[200\] outside 0..4"),
    ("missing", r"does not exist"),
    ("corrupt", r"cannot be decoded"),
    ("truncated image", r"is truncated \(no JPEG end-of-image marker\)"),
    ("image size", r"is 64x64 but its image .* is 48x64"),
])
def test_ade20k_bad_samples_are_named_or_skipped_and_counted(tmp_path, tiny_ade, how, message):
    root = tmp_path / "ade"
    shutil.copytree(tiny_ade, root)
    victim = corrupt_ade_mask(root, how)
    with pytest.raises(DatasetError, match=message) as info:
        ADE20KSegmentation(root, "val")
    assert victim.name in str(info.value) and "on_bad_sample: skip" in str(info.value)
    ds = ADE20KSegmentation(root, "val", on_bad_sample="skip")
    assert len(ds) == 3 and len(ds.skipped) == 1 and ds.skipped[0][0] == str(mask_path(root, "val", victim.stem))
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


def coco_copy_with(tmp_path, tiny_coco, change):
    """A copy of the tiny COCO set whose val annotations ``change(data)`` edited."""
    copy = tmp_path / "coco"
    shutil.copytree(tiny_coco, copy)
    path = coco.annotation_file(copy, "val")
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return copy, data


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["annotations"][1].update(category_id=77), r"annotation 2 \(image \d+\) has category_id 77, which is "
                                                           r"not in the file's categories \(ids \[1, 2, 3\]\)"),
    (lambda d: d["annotations"][2].pop("bbox"), r"annotation 3 \(image \d+\) lacks the key\(s\) \['bbox'\]"),
    (lambda d: d["annotations"][0].update(image_id=999), r"annotation 1 \(image 999\) names image id 999, which is "
                                                         r"not in the file's images"),
])
def test_coco_annotation_that_no_coco_tool_reads_is_an_error_naming_the_record(tmp_path, tiny_coco, change, expected):
    copy, _ = coco_copy_with(tmp_path, tiny_coco, change)
    for opening in (coco.verify_layout, lambda root: CocoDetection(root, "val")):
        with pytest.raises(DatasetError, match=expected) as err:
            opening(copy)
        assert "instances_val2017.json" in str(err.value)


def test_coco_boxes_without_area_and_short_polygons_are_left_out_and_counted(tmp_path, tiny_coco):
    def change(data):
        data["annotations"][0]["bbox"][2] = 0.0                     # zero width
        data["annotations"][1]["bbox"][3] = -4.0                    # negative height
        data["annotations"][2]["segmentation"] = [[1.0, 1.0, 9.0, 9.0]]  # one polygon of two points
        data["annotations"][3]["segmentation"].append([5.0, 5.0])   # a valid polygon and a one-point one

    copy, data = coco_copy_with(tmp_path, tiny_coco, change)
    first_four = data["annotations"][:4]
    summary = coco.verify_layout(copy)
    skipped = summary["splits"]["val"]["skipped_annotations"]
    assert [s["record"].split(": ")[1] for s in skipped] == [
        f"annotation {a['id']} (image {a['image_id']})" for a in (first_four[0], first_four[1], first_four[2],
                                                                  first_four[2], first_four[3])]
    assert ["no area" in s["reason"] for s in skipped] == [True, True, False, False, False]
    assert "fewer than three points): dropped" in skipped[2]["reason"] and "left out" in skipped[3]["reason"]
    assert summary["splits"]["train"]["skipped_annotations"] == []

    ds = CocoDetection(copy, "val")
    assert len(ds.skipped) == 5
    gone = {first_four[0]["id"], first_four[1]["id"], first_four[2]["id"]}
    for index, image_id in enumerate(ds.ids):
        expected = [a for a in data["annotations"] if a["image_id"] == image_id and a["id"] not in gone]
        _, target = ds[index]
        assert len(target["labels"]) == len(expected) == target["masks"].shape[0]
    # the annotation that lost its one-point polygon keeps the mask of the polygon it had
    fourth = first_four[3]
    _, target = ds[ds.ids.index(fourth["image_id"])]
    own = [a for a in data["annotations"] if a["image_id"] == fourth["image_id"] and a["id"] not in gone]
    mask = target["masks"][own.index(fourth)]
    assert mask.sum() > 0 and torch.equal(mask, torch.from_numpy(ds.coco.annToMask(
        {**fourth, "segmentation": fourth["segmentation"][:-1]})))
