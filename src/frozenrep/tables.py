"""Result tables, built from the metric files alone.

results/table1.csv has one row per (backbone, mode) and a column ``<task>_<metric>`` for every
table metric of every task present; with more than one seed each cell is the mean over seeds and
a ``<column>_std`` column holds the standard deviation. New tasks only add columns. The same
numbers go out as JSON (DVC metrics), Markdown (``mean ± std``) and a bar chart.

results/table2.csv (head capacity) has one row per (task, rung, mode) with the rung's head and
trainable parameter counts; results/table3.csv (backbone size) and results/table4.csv (backbone
families) one row per (backbone, mode) with the backbone's parameter count, plus published
reference rows that are marked as such.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

from frozenrep.io import atomic_path, write_json_atomic
from frozenrep.tasks import TASKS, column_name, column_of

KEY_COLUMNS = ["backbone", "pretraining", "mode"]
TABLE2_KEYS = ["task", "rung", "mode"]
COUNT_COLUMNS = ["head_params", "trainable_params", "backbone_params"]
STRING_COLUMNS = set(KEY_COLUMNS + TABLE2_KEYS + ["source"])
SHARE_COLUMN = "trainable_pct"  # table 2: the percentage of the model's parameters that train
NON_VALUE_COLUMNS = STRING_COLUMNS | set(COUNT_COLUMNS + ["seeds", SHARE_COLUMN])
MODE_TITLES = {"frozen": "frozen", "finetune": "fine-tune"}


def column_title(column: str) -> str:
    """``coco_box_ap`` -> ``COCO box AP``, from the task's declaration (unknown names are shown as they are)."""
    task, metric = column_of(column)
    if task is None:
        return column
    return f"{task.title} {task.metrics.get(metric, metric)}".strip()


def value_columns(table: pd.DataFrame) -> list[str]:
    """The metric columns of a table from :func:`build_table`, in order, without their ``_std`` twins."""
    return [c for c in table.columns if c not in NON_VALUE_COLUMNS and not c.endswith("_std")]


def load_metrics(paths: Iterable[str | Path], rungs: dict[str, str] | None = None,
                 counts: bool = False) -> pd.DataFrame:
    """One long-form row per (task, backbone, mode, seed, metric).

    ``rungs`` maps a metric file to its table-2 rung (files of table 1's jobs carry none); with
    ``counts`` the rows also carry the job's parameter counts, which older metric files lack.
    """
    rows = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"metric file {path} cannot be read ({err}); delete it and rerun its evaluation.") from err
        extra = {}
        if rungs is not None:
            extra["rung"] = rungs.get(str(path)) or record.get("rung") or "profile"
        if counts:
            missing = [key for key in COUNT_COLUMNS if key not in record]
            if missing:
                raise ValueError(f"metric file {path} has no {', '.join(missing)} (written by an older frozenrep); "
                                 "delete it and rerun its evaluation.")
            extra.update({key: record[key] for key in COUNT_COLUMNS})
        for metric in record["table_metrics"]:
            rows.append({"task": record["task"], "backbone": record["backbone"],
                         "pretraining": record["pretraining"], "mode": record["mode"], "seed": record["seed"],
                         "column": column_name(record["task"], metric), "value": record["metrics"][metric], **extra})
    if not rows:
        raise ValueError("no metric files given")
    return pd.DataFrame(rows)


def aggregate(long: pd.DataFrame, keys: list[str], carried: list[str] = ()) -> pd.DataFrame:
    """Rows per ``keys``: the number of seeds, the ``carried`` columns (one value per row: the first),
    and per metric column the mean, followed by its ``_std`` over seeds when any row has several."""
    order = list(dict.fromkeys(long["column"]))
    grouped = long.groupby(keys + ["column"], sort=False)["value"]
    mean = grouped.mean().unstack("column")[order]
    rows = long.groupby(keys, sort=False)
    table = mean.join(rows["seed"].nunique().rename("seeds"))
    for column in carried:
        table = table.join(rows[column].first())
    if int(table["seeds"].max()) > 1:
        std = grouped.std(ddof=1).unstack("column")[order].add_suffix("_std")
        table = table.join(std)
        values = [c for pair in zip(order, [f"{o}_std" for o in order]) for c in pair]
    else:
        values = order
    table = table.reindex(rows.size().index)  # the keys in the order of the files
    return table[["seeds", *carried] + values].reset_index()


def build_table(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Table 1: mean (and std over seeds when there are several) per (backbone, mode) and metric."""
    return aggregate(load_metrics(paths), KEY_COLUMNS)


def build_table2(paths: Iterable[str | Path], rungs: dict[str, str]) -> pd.DataFrame:
    """Table 2 (head capacity): one row per (task, rung, mode), with the head's parameter count, the
    trainable count in that mode (the head, plus the backbone when fine-tuned) and the trainable
    share of the whole model in percent (what [Vasconcelos22] plot the frozen detector's AP against)."""
    long = load_metrics(paths, rungs=rungs, counts=True)
    table = aggregate(long, TABLE2_KEYS, carried=["backbone", "head_params", "trainable_params", "backbone_params"])
    share = 100 * table["trainable_params"] / (table["head_params"] + table["backbone_params"])
    table.insert(table.columns.get_loc("trainable_params") + 1, SHARE_COLUMN, share)
    return table.drop(columns="backbone_params")


def build_backbone_table(paths: Iterable[str | Path], published: list[dict] = (),
                         section: str = "table3") -> pd.DataFrame:
    """Tables 3 (backbone size) and 4 (backbone families): one row per (backbone, mode) with the
    backbone's parameter count; then the ``published`` reference rows of the profile's ``section``
    (``backbone``, ``pretraining``, ``mode``, ``backbone_params``, ``source``,
    ``metrics: {column: value}``), never mixed with measured ones."""
    table = aggregate(load_metrics(paths, counts=True), KEY_COLUMNS, carried=["backbone_params"])
    table.insert(len(KEY_COLUMNS), "source", "measured")
    rows = []
    for index, row in enumerate(published):
        unknown = sorted(set(row["metrics"]) - set(value_columns(table)))
        if unknown:
            raise ValueError(f"{section}.published[{index}] ({row['backbone']}): metric(s) {unknown} are not columns "
                             f"of the table ({', '.join(value_columns(table))})")
        rows.append({"backbone": row["backbone"], "pretraining": row["pretraining"], "mode": row["mode"],
                     "source": f"published: {row['source']}", "seeds": pd.NA,
                     "backbone_params": row["backbone_params"], **row["metrics"]})
    if rows:
        table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    return table


def write_table(table: pd.DataFrame, out: str | Path) -> None:
    """CSV with two decimals, written atomically."""
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.2f")


def table_keys(table: pd.DataFrame) -> list[str]:
    """What names a row: (task, rung, mode) in table 2, (backbone, mode) in tables 1 and 3."""
    return ["task", "rung", "mode"] if "rung" in table.columns else ["backbone", "mode"]


def nested_cells(table: pd.DataFrame) -> dict:
    """The table as ``{backbone: {mode: {column: value}}}`` (table 2: ``{task: {rung: {mode: ...}}}``),
    numbers only, empty cells left out."""
    keys = table_keys(table)
    nested: dict = {}
    for row in table.to_dict("records"):
        cells = {k: (int(v) if k in COUNT_COLUMNS or k == "seeds" else round(float(v), 2)) for k, v in row.items()
                 if k not in STRING_COLUMNS and pd.notna(v)}
        level = nested
        for key in keys[:-1]:
            level = level.setdefault(row[key], {})
        level[row[keys[-1]]] = cells
    return nested


def table_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Every cell as one MLflow metric, named by its row and column: ``<backbone>/<mode>/<column>``
    (e.g. ``tiny-swin-none/frozen/k400_top1``); table 2: ``<task>/<rung>/<mode>/<column>``."""
    def walk(prefix: str, node: dict) -> Iterable[tuple[str, float]]:
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(f"{prefix}{key}/", value)
            else:
                yield f"{prefix}{key}", value

    return dict(walk("", nested_cells(table)))


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


def _cell(row: dict, column: str) -> str:
    value, std = row.get(column), row.get(f"{column}_std")
    if value is None or pd.isna(value):
        return ""
    return f"{value:.2f} ± {std:.2f}" if std is not None and pd.notna(std) else f"{value:.2f}"


def _count(value: float) -> str:
    """Parameter counts as people say them: 12.3k, 1.23M, 3.00B."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return str(int(value))


def _write_markdown(text: str, out: str | Path, caption: str) -> None:
    with atomic_path(out) as tmp:
        Path(tmp).write_text((f"{caption}\n\n" if caption else "") + text + "\n")


def write_table2_markdown(table: pd.DataFrame, out: str | Path, caption: str = "") -> None:
    """One Markdown table per task: a row per rung with its head size, each metric frozen and
    fine-tuned side by side, and the gap (fine-tune minus frozen) that table 2 asks about."""
    sections = []
    for task in dict.fromkeys(table["task"]):
        sub = table[table["task"] == task]
        columns = [c for c in value_columns(sub) if sub[c].notna().any()]
        modes = list(dict.fromkeys(sub["mode"]))
        rows = []
        for rung in dict.fromkeys(sub["rung"]):
            by_mode = {r["mode"]: r for r in sub[sub["rung"] == rung].to_dict("records")}
            first = next(iter(by_mode.values()))
            cells = {"Rung": rung, "Head params": _count(first["head_params"]), "Seeds": int(first["seeds"])}
            if "frozen" in by_mode:
                cells["Trainable frozen"] = f"{by_mode['frozen'][SHARE_COLUMN]:.1f} %"
            for column in columns:
                for mode in modes:
                    cells[f"{column_title(column)} {MODE_TITLES.get(mode, mode)}"] = _cell(by_mode.get(mode, {}), column)
                if {"frozen", "finetune"} <= set(by_mode):
                    gap = by_mode["finetune"][column] - by_mode["frozen"][column]
                    cells[f"{column_title(column)} gap"] = f"{gap:+.2f}"
            rows.append(cells)
        text = pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True,
                                              colalign=["left"] + ["right"] * (len(rows[0]) - 1))
        sections.append(f"### {TASKS[task].title if task in TASKS else task}\n\n{text}")
    _write_markdown("\n\n".join(sections), out, caption)


def write_backbone_table_markdown(table: pd.DataFrame, out: str | Path, caption: str = "") -> None:
    """A row per backbone and mode with the backbone's size; published rows say where they are from."""
    columns = value_columns(table)
    rows = []
    for row in table.to_dict("records"):
        cells = {"Backbone": row["backbone"], "Pretraining": row["pretraining"],
                 "Mode": MODE_TITLES.get(row["mode"], row["mode"]), "Params": _count(row["backbone_params"]),
                 "Seeds": "" if pd.isna(row["seeds"]) else str(int(row["seeds"]))}
        cells.update({column_title(c): _cell(row, c) for c in columns})
        cells["Source"] = row["source"]
        rows.append(cells)
    text = pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True,
                                          colalign=["left"] * 3 + ["right"] * (len(columns) + 2) + ["left"])
    _write_markdown(text, out, caption)


def _line_panels(columns: list[str], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(columns), figsize=(3.4 * len(columns) + 0.6, 3.6), squeeze=False)
    if title:
        fig.suptitle(title)
    return plt, fig, axes[0]


def _save(plt, fig, out: str | Path) -> None:
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120, metadata={"Software": None})
    plt.close(fig)


def _mode_lines(ax, frame: pd.DataFrame, x: str, column: str) -> dict[str, pd.DataFrame]:
    """One error-bar line per mode of ``column`` against ``x`` (sorted), std over seeds as bars."""
    frame = frame[frame[column].notna()].sort_values(x, kind="stable")
    lines = {}
    for m, mode in enumerate(dict.fromkeys(frame["mode"])):
        line = lines[mode] = frame[frame["mode"] == mode]
        std = line[f"{column}_std"] if f"{column}_std" in line else None
        ax.errorbar(line[x], line[column], yerr=std, marker="o", capsize=3, color=f"C{m}",
                    label=MODE_TITLES.get(mode, mode))
    ax.set_xscale("log")
    ax.set_xlabel(x.replace("_params", " parameters"))
    ax.set_title(column_title(column))
    ax.grid(alpha=0.3)
    return lines


def plot_table2(table: pd.DataFrame, out: str | Path, title: str = "") -> None:
    """One panel per metric: the metric against the head's parameter count (the trainable count when
    frozen; log scale), a line per mode with the std over seeds as error bars, rungs labelled."""
    columns = value_columns(table)
    plt, fig, axes = _line_panels(columns, title)
    for ax, column in zip(axes, columns):
        lines = _mode_lines(ax, table, "head_params", column)
        first = next(iter(lines.values()))
        for x, y, rung in zip(first["head_params"], first[column], first["rung"]):
            ax.annotate(rung, (x, y), textcoords="offset points", xytext=(3, 4), fontsize="x-small")
    axes[0].legend(loc="best", fontsize="small")
    _save(plt, fig, out)


def plot_table3(table: pd.DataFrame, out: str | Path, title: str = "") -> None:
    """One panel per metric: the metric against the backbone's parameter count (log scale), a line
    per mode over the measured backbones; published rows as separate stars, labelled."""
    columns = value_columns(table)
    plt, fig, axes = _line_panels(columns, title)
    measured, published = table[table["source"] == "measured"], table[table["source"] != "measured"]
    for ax, column in zip(axes, columns):
        _mode_lines(ax, measured, "backbone_params", column)
        for row in published[published[column].notna()].to_dict("records"):
            ax.plot([row["backbone_params"]], [row[column]], marker="*", markersize=11, color="black",
                    linestyle="none", label=f"{row['backbone']} (published)")
    axes[0].legend(loc="best", fontsize="small")
    _save(plt, fig, out)
