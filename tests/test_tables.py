"""results/table1.csv: one row per backbone and mode, mean and std over seeds."""

import json

import numpy as np
import pandas as pd
import pytest

from frozenrep.tables import build_table, plot_table, write_table, write_table_markdown


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


def study_table(tmp_path, seeds):
    """Two backbones x two modes x ``seeds`` seeds of COCO metric files, through build_table."""
    paths = []
    for b, backbone in enumerate(["tiny-a", "tiny-b"]):
        for m, mode in enumerate(["frozen", "finetune"]):
            for seed in range(seeds):
                path = metric_file(tmp_path / f"{backbone}-{mode}-{seed}.json", backbone, mode, seed,
                                   10.0 * (b + 1) + m + seed, 5.0 + seed)
                paths.append(path)
    return build_table(paths)


def test_markdown_shows_mean_and_std_per_cell(tmp_path):
    write_table_markdown(study_table(tmp_path, 3), tmp_path / "t.md", "study: 3 seeds")
    lines = (tmp_path / "t.md").read_text().splitlines()
    assert lines[0] == "study: 3 seeds"
    assert [c.strip() for c in lines[2].strip("|").split("|")] == [
        "Backbone", "Pretraining", "Mode", "Seeds", "COCO box AP", "COCO mask AP"]
    frozen_a = [c.strip() for c in lines[4].strip("|").split("|")]
    assert frozen_a == ["tiny-a", "none", "frozen", "3", "11.00 ± 1.00", "6.00 ± 1.00"]
    write_table_markdown(study_table(tmp_path, 1), tmp_path / "one.md")
    assert "±" not in (tmp_path / "one.md").read_text() and "fine-tune" in (tmp_path / "one.md").read_text()


def test_plot_has_one_panel_per_column_and_a_bar_per_backbone_and_mode(tmp_path, monkeypatch):
    import matplotlib.figure
    from PIL import Image

    saved = {}
    savefig = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        saved["axes"] = [(ax.get_title(), len(ax.patches), [t.get_text() for t in ax.get_xticklabels()],
                          len(ax.lines)) for ax in fig.axes]
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    plot_table(study_table(tmp_path, 3), tmp_path / "t.png", "study")
    with Image.open(tmp_path / "t.png") as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 100
    titles = [a[0] for a in saved["axes"]]
    assert titles == ["COCO box AP", "COCO mask AP"]
    # both backbones say pretraining "none", so the bars are labelled by backbone
    assert all(bars == 4 and labels == ["tiny-a", "tiny-b"] for _, bars, labels, _ in saved["axes"])
    assert all(errorbars > 0 for *_, errorbars in saved["axes"])  # standard deviations drawn
    assert not list(tmp_path.glob("*.tmp*"))
