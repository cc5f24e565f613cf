"""Result tables, built from the metric files alone.

results/table1.csv has one row per (backbone, mode) and a column ``<task>_<metric>`` for every
table metric of every task present; with more than one seed each cell is the mean over seeds and
a ``<column>_std`` column holds the standard deviation. New tasks only add columns. The same
numbers go out as JSON (DVC metrics), Markdown (``mean ± std``) and a bar chart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

from frozenrep.io import atomic_path, write_json_atomic

KEY_COLUMNS = ["backbone", "pretraining", "mode"]
TASK_TITLES = {"coco": "COCO", "ade20k": "ADE20K", "k400": "K400"}
METRIC_TITLES = {"box_ap": "box AP", "mask_ap": "mask AP", "miou": "mIoU", "top1": "top-1"}
MODE_TITLES = {"frozen": "frozen", "finetune": "fine-tune"}


def column_title(column: str) -> str:
    """``coco_box_ap`` -> ``COCO box AP`` (unknown names are shown as they are)."""
    task, _, metric = column.partition("_")
    return f"{TASK_TITLES.get(task, task)} {METRIC_TITLES.get(metric, metric)}".strip()


def value_columns(table: pd.DataFrame) -> list[str]:
    """The metric columns of a table from :func:`build_table`, in order, without their ``_std`` twins."""
    return [c for c in table.columns if c not in KEY_COLUMNS + ["seeds"] and not c.endswith("_std")]


def load_metrics(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One long-form row per (task, backbone, mode, seed, metric)."""
    rows = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"metric file {path} cannot be read ({err}); delete it and rerun its evaluation.") from err
        for metric in record["table_metrics"]:
            rows.append({"task": record["task"], "backbone": record["backbone"],
                         "pretraining": record["pretraining"], "mode": record["mode"], "seed": record["seed"],
                         "column": f"{record['task']}_{metric}", "value": record["metrics"][metric]})
    if not rows:
        raise ValueError("no metric files given")
    return pd.DataFrame(rows)


def build_table(paths: Iterable[str | Path]) -> pd.DataFrame:
    """The wide table: mean (and std over seeds when there are several) per cell."""
    long = load_metrics(paths)
    order = list(dict.fromkeys(long["column"]))
    grouped = long.groupby(KEY_COLUMNS + ["column"], sort=False)["value"]
    mean = grouped.mean().unstack("column")[order]
    seeds = long.groupby(KEY_COLUMNS, sort=False)["seed"].nunique().rename("seeds")
    table = mean.join(seeds)
    if int(seeds.max()) > 1:
        std = grouped.std(ddof=1).unstack("column")[order].add_suffix("_std")
        table = table.join(std)
        table = table[["seeds"] + [c for pair in zip(order, [f"{o}_std" for o in order]) for c in pair]]
    else:
        table = table[["seeds"] + order]
    return table.reset_index()


def write_table(table: pd.DataFrame, out: str | Path) -> None:
    """CSV with two decimals, written atomically."""
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.2f")


def nested_cells(table: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """The table as ``{backbone: {mode: {column: value}}}`` (empty cells left out)."""
    nested: dict[str, dict[str, dict[str, float]]] = {}
    for row in table.to_dict("records"):
        cells = {k: (round(float(v), 2) if k != "seeds" else int(v)) for k, v in row.items()
                 if k not in KEY_COLUMNS and pd.notna(v)}
        nested.setdefault(row["backbone"], {})[row["mode"]] = cells
    return nested


def table_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Every cell as one MLflow metric, ``<backbone>/<mode>/<column>`` (e.g. ``tiny-swin-none/frozen/k400_top1``)."""
    return {f"{backbone}/{mode}/{column}": value for backbone, modes in nested_cells(table).items()
            for mode, cells in modes.items() for column, value in cells.items()}


def write_table_json(table: pd.DataFrame, out: str | Path) -> None:
    """The same numbers nested as ``{backbone: {mode: {column: value}}}`` (DVC metrics), atomically."""
    write_json_atomic(out, nested_cells(table))


def write_table_markdown(table: pd.DataFrame, out: str | Path, caption: str = "") -> None:
    """A readable Markdown table: ``mean ± std`` per cell when there are several seeds, atomically."""
    columns = value_columns(table)
    rows = []
    for row in table.to_dict("records"):
        cells = {"Backbone": row["backbone"], "Pretraining": row["pretraining"],
                 "Mode": MODE_TITLES.get(row["mode"], row["mode"]), "Seeds": int(row["seeds"])}
        for column in columns:
            value, std = row[column], row.get(f"{column}_std")
            cells[column_title(column)] = "" if pd.isna(value) else (
                f"{value:.2f} ± {std:.2f}" if std is not None and pd.notna(std) else f"{value:.2f}")
        rows.append(cells)
    text = pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True,  # keep two decimals
                                          colalign=["left"] * 3 + ["right"] * (len(columns) + 1))
    if caption:
        text = f"{caption}\n\n{text}"
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text + "\n")


def plot_table(table: pd.DataFrame, out: str | Path, title: str = "") -> None:
    """One panel per table column (task metric): a group of bars per pretraining, frozen next to
    fine-tune, with the standard deviation over seeds as error bars. PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = value_columns(table)
    backbones = list(dict.fromkeys(table["backbone"]))
    labels = [table.loc[table["backbone"] == b, "pretraining"].iloc[0] for b in backbones]
    if len(set(labels)) < len(labels):  # two backbones with one pretraining (Swin-B and SwinV2-B IN-22K)
        labels = backbones
    modes = list(dict.fromkeys(table["mode"]))
    width = 0.8 / max(len(modes), 1)
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns) + 0.8, 3.6), squeeze=False)
    for ax, column in zip(axes[0], columns):
        for m, mode in enumerate(modes):
            sub = table[table["mode"] == mode].set_index("backbone").reindex(backbones)
            std = sub[f"{column}_std"] if f"{column}_std" in sub else None
            ax.bar([i + (m - (len(modes) - 1) / 2) * width for i in range(len(backbones))], sub[column], width,
                   yerr=std, capsize=3, label=MODE_TITLES.get(mode, mode), color=f"C{m}")
        ax.set_title(column_title(column))
        ax.set_xticks(range(len(backbones)), labels, rotation=30, ha="right")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120, metadata={"Software": None})
    plt.close(fig)
