"""Result tables, built from the metric files alone.

results/table1.csv has one row per (backbone, mode) and a column ``<task>_<metric>`` for every
table metric of every task present; with more than one seed each cell is the mean over seeds and
a ``<column>_std`` column holds the standard deviation. New tasks only add columns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

from frozenrep.io import atomic_path, write_json_atomic

KEY_COLUMNS = ["backbone", "pretraining", "mode"]


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


def write_table_json(table: pd.DataFrame, out: str | Path) -> None:
    """The same numbers nested as ``{backbone: {mode: {column: value}}}`` (DVC metrics), atomically."""
    nested: dict[str, dict[str, dict[str, float]]] = {}
    for row in table.to_dict("records"):
        cells = {k: (round(float(v), 2) if k != "seeds" else int(v)) for k, v in row.items()
                 if k not in KEY_COLUMNS and pd.notna(v)}
        nested.setdefault(row["backbone"], {})[row["mode"]] = cells
    write_json_atomic(out, nested)
