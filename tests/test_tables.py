"""results/table1.csv: one row per backbone and mode, mean and std over seeds."""

import json

import numpy as np
import pandas as pd
import pytest

from frozenrep.tables import build_table, write_table


def metric_file(path, backbone, mode, seed, box, mask):
    path.write_text(json.dumps({"task": "coco", "backbone": backbone, "pretraining": "none", "mode": mode,
                                "seed": seed, "metrics": {"box_ap": box, "mask_ap": mask, "box_ap50": 1.0},
                                "table_metrics": ["box_ap", "mask_ap"]}))
    return path


def test_one_seed_gives_plain_columns(tmp_path):
    paths = [metric_file(tmp_path / "a.json", "b1", "frozen", 0, 10.0, 12.0),
             metric_file(tmp_path / "b.json", "b1", "finetune", 0, 20.0, 22.0)]
    table = build_table(paths)
    assert list(table.columns) == ["backbone", "pretraining", "mode", "seeds", "coco_box_ap", "coco_mask_ap"]
    assert table[["mode", "coco_box_ap"]].values.tolist() == [["frozen", 10.0], ["finetune", 20.0]]


def test_several_seeds_give_mean_and_std(tmp_path):
    values = [(10.0, 1.0), (14.0, 2.0), (15.0, 6.0)]
    paths = [metric_file(tmp_path / f"{s}.json", "b1", "frozen", s, box, mask) for s, (box, mask) in enumerate(values)]
    table = build_table(paths)
    row = table.iloc[0]
    assert row["seeds"] == 3
    assert row["coco_box_ap"] == pytest.approx(np.mean([10, 14, 15]))
    assert row["coco_box_ap_std"] == pytest.approx(np.std([10, 14, 15], ddof=1))
    assert list(table.columns)[4:] == ["coco_box_ap", "coco_box_ap_std", "coco_mask_ap", "coco_mask_ap_std"]
    write_table(table, tmp_path / "t.csv")
    assert pd.read_csv(tmp_path / "t.csv")["coco_box_ap"].iloc[0] == pytest.approx(13.0)


def test_unreadable_metric_file_is_named(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        build_table([tmp_path / "bad.json"])
