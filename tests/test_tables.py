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


def rung_file(path, task, rung, mode, seed, value, head_params, backbone_params=1000):
    metric = {"coco": "box_ap", "ade20k": "miou", "k400": "top1"}[task]
    trainable = head_params + (backbone_params if mode == "finetune" else 0)
    path.write_text(json.dumps({"task": task, "backbone": "b1", "pretraining": "supervised", "mode": mode,
                                "seed": seed, "rung": rung, "metrics": {metric: value}, "table_metrics": [metric],
                                "head_params": head_params, "trainable_params": trainable,
                                "backbone_params": backbone_params}))
    return str(path)


def test_table2_has_a_row_per_task_rung_and_mode_with_parameter_counts(tmp_path):
    from frozenrep.tables import build_table2, nested_cells, table_metrics, write_table2_markdown

    paths, rungs = [], {}
    for task, ladder in {"coco": [("light", 100), ("heavy", 400)], "k400": [("depth0", 50), ("depth2", 90)]}.items():
        for r, (rung, size) in enumerate(ladder):
            for mode, base in (("frozen", 10.0), ("finetune", 20.0)):
                for seed in range(2):
                    path = rung_file(tmp_path / f"{task}-{rung}-{mode}-{seed}.json", task, None, mode, seed,
                                     base + 5 * r + seed, size)
                    paths.append(path)
                    rungs[path] = rung  # the rung comes from the rule, as table 1's files carry none
    table = build_table2(paths, rungs)
    assert table[["task", "rung", "mode"]].values.tolist()[:4] == [
        ["coco", "light", "frozen"], ["coco", "light", "finetune"], ["coco", "heavy", "frozen"],
        ["coco", "heavy", "finetune"]]
    heavy_ft = table[(table["rung"] == "heavy") & (table["mode"] == "finetune")].iloc[0]
    assert heavy_ft["head_params"] == 400 and heavy_ft["trainable_params"] == 1400 and heavy_ft["seeds"] == 2
    heavy = table[(table["rung"] == "heavy") & (table["mode"] == "frozen")].iloc[0]
    assert heavy["trainable_pct"] == pytest.approx(100 * 400 / 1400) and heavy_ft["trainable_pct"] == 100.0
    assert heavy_ft["coco_box_ap"] == pytest.approx(25.5) and heavy_ft["coco_box_ap_std"] == pytest.approx(0.7071, 1e-3)
    assert pd.isna(heavy_ft["k400_top1"])  # another task's column stays empty
    assert nested_cells(table)["k400"]["depth2"]["frozen"]["k400_top1"] == pytest.approx(15.5)
    assert table_metrics(table)["coco/light/frozen/head_params"] == 100
    write_table2_markdown(table, tmp_path / "t2.md", "heads")
    text = (tmp_path / "t2.md").read_text()
    assert "### COCO" in text and "### K400" in text
    light = next(line for line in text.splitlines() if line.startswith("| light"))
    assert [c.strip() for c in light.strip("|").split("|")] == [
        "light", "100", "2", "9.1 %", "10.50 ± 0.71", "20.50 ± 0.71", "+10.00"]


def test_table2_names_a_metric_file_without_parameter_counts(tmp_path):
    from frozenrep.tables import build_table2

    path = metric_file(tmp_path / "old.json", "b1", "frozen", 0, 1.0, 2.0)
    with pytest.raises(ValueError, match=r"old.json has no head_params.*rerun its evaluation"):
        build_table2([path], {})


def test_table3_keeps_published_rows_apart_and_plots_against_backbone_size(tmp_path, monkeypatch):
    import matplotlib.figure

    from frozenrep.tables import build_backbone_table, plot_table3, write_backbone_table_markdown

    paths = []
    for name, size, box in (("small", 1e5, 3.0), ("big", 1.4e6, 9.0)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"task": "coco", "backbone": name, "pretraining": "supervised", "mode": "frozen",
                                    "seed": 0, "metrics": {"box_ap": box}, "table_metrics": ["box_ap"],
                                    "head_params": 10, "trainable_params": 10, "backbone_params": size}))
        paths.append(path)
    published = [{"backbone": "giant", "pretraining": "ext22k", "mode": "frozen", "backbone_params": 3e9,
                  "source": "a paper", "metrics": {"coco_box_ap": 59.3}}]
    table = build_backbone_table(paths, published)
    assert table["source"].tolist() == ["measured", "measured", "published: a paper"]
    assert table["backbone_params"].tolist() == [1e5, 1.4e6, 3e9] and table["coco_box_ap"].tolist() == [3, 9, 59.3]
    write_backbone_table_markdown(table, tmp_path / "t3.md")
    assert "| giant" in (tmp_path / "t3.md").read_text() and "3B" in (tmp_path / "t3.md").read_text()
    saved = {}
    savefig = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        ax = fig.axes[0]
        saved["lines"] = [(line.get_label(), list(line.get_xdata())) for line in ax.lines if line.get_label()[0] != "_"]
        saved["lines"] += [(c.get_label(), list(c.lines[0].get_xdata())) for c in ax.containers]
        saved["scale"] = ax.get_xscale()
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    plot_table3(table, tmp_path / "t3.png")
    assert saved["scale"] == "log"
    assert ("giant (published)", [3e9]) in saved["lines"]
    assert any(label == "frozen" and xs == [1e5, 1.4e6] for label, xs in saved["lines"])
    with pytest.raises(ValueError, match=r"table3.published\[0\] \(giant\).*ade20k_miou"):
        build_backbone_table(paths, [{**published[0], "metrics": {"ade20k_miou": 50.0}}])
