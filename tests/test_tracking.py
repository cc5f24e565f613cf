"""MLflow structure (a parent run per table, children per job) and the pictures runs carry."""

import numpy as np
import pytest
import torch

from frozenrep.io import atomic_dir
from frozenrep.tracking import log_table, parent_run, tracked_run


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


def test_parent_run_is_created_once_and_every_job_becomes_its_child(store, tmp_path):
    from mlflow.tracking import MlflowClient

    first = parent_run(store, "study", "table1")
    assert parent_run(store, "study", "table1") == first
    assert parent_run(store, "study", "table2") != first  # one parent per table
    with tracked_run(store, "study", "coco-b-frozen-s0", {"task": "coco"}) as run:
        run.log_metrics({"coco/box_ap": 1.5})
    client = MlflowClient(store)
    child = client.get_run(run.run_id)
    assert child.data.tags["mlflow.parentRunId"] == first and child.info.status == "FINISHED"
    assert child.info.run_name == "coco-b-frozen-s0"

    # a parent created by a racing process later is not taken: everybody settles on the earliest
    experiment_id = client.get_experiment_by_name("study").experiment_id
    client.create_run(experiment_id, run_name="table1", tags={"role": "table", "table": "table1"})
    assert parent_run(store, "study", "table1") == first


def test_log_table_puts_cells_and_files_on_the_parent_and_finishes_it(store, tmp_path):
    from mlflow.tracking import MlflowClient

    csv = tmp_path / "table1.csv"
    csv.write_text("backbone,mode,k400_top1\nb,frozen,50.00\n")
    run_id = log_table(store, "study", "table1", {"b/frozen/k400_top1": 50.0}, [csv])
    assert run_id == parent_run(store, "study", "table1")
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics == {"b/frozen/k400_top1": 50.0}
    assert [a.path for a in MlflowClient(store).list_artifacts(run_id, "table")] == ["table/table1.csv"]


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path):
    target = tmp_path / "pictures"
    with atomic_dir(target) as tmp:
        (tmp / "a.png").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b.png").write_bytes(b"new")
            raise RuntimeError("killed half way")
    assert sorted(p.name for p in target.iterdir()) == ["a.png"]  # the old folder, untouched
    with atomic_dir(target) as tmp:
        (tmp / "c.png").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["c.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pictures"]  # no temporary folders left


def test_atomic_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    """mkstemp and mkdtemp make private files and folders; outputs must be readable as if opened plainly."""
    import os
    import stat

    from frozenrep.io import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "table1.csv", "a,b\n")
        with atomic_dir(tmp_path / "pictures") as tmp:
            (tmp / "a.png").write_bytes(b"png")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "table1.csv").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "pictures").stat().st_mode) == 0o755


def test_detection_pictures_draw_the_predicted_box_in_its_class_colour(tiny_coco, tmp_path):
    from PIL import Image

    from frozenrep.data.coco import CocoDetection
    from frozenrep.pictures import palette
    from frozenrep.tasks.coco import detection_pictures

    dataset = CocoDetection(tiny_coco, "val", train=False)
    image_id = dataset.ids[0]
    category = sorted(dataset.coco.cats)[1]
    record = {"image_id": image_id, "category_id": category, "bbox": [10.0, 12.0, 30.0, 20.0], "score": 0.9}
    low = {**record, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.1}
    written = detection_pictures(dataset, [low, record], tmp_path, count=1, max_detections=1)
    assert [p.name for p in written] == [f"00-image{image_id}.png"]
    with Image.open(written[0]) as sheet:
        pixels = np.asarray(sheet.convert("RGB"))
    factor = 4                                                 # 64-px images are scaled up to 256
    left = 256 + 4                                             # the prediction panel starts after the truth panel
    top = 18                                                   # below the caption
    colour = palette(len(dataset.coco.cats))[1]
    edge = pixels[top + 25 * factor, left + 10 * factor]       # a point on the box's left edge (x = 10 px)
    assert tuple(edge) == colour
    inside_low = pixels[top + 2 * factor, left + 2 * factor]   # the lower-scoring box is not drawn
    assert tuple(inside_low) != colour


def test_segmentation_overlay_tints_each_class_and_leaves_ignored_pixels(tmp_path):
    from frozenrep.pictures import class_overlay, palette

    image = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    labels = torch.tensor([[0, 0, 1, 1]] * 2 + [[255, 255, 255, 255]] * 2)
    colours = palette(2)
    out = class_overlay(image, labels, colours)
    expected = [round(0.45 * 100 + 0.55 * c) for c in colours[1]]
    assert out[:, 0, 3].tolist() == pytest.approx(expected, abs=1)
    assert out[:, 3, 0].tolist() == [100, 100, 100]
