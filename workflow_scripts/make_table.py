"""Aggregate metric files into a result table and its twins: nested JSON (DVC metrics), Markdown
and a chart. table1: one row per backbone and mode; table2 (head capacity): one row per task, head
rung and mode; table3 (backbone size) and table4 (backbone families): one row per backbone and
mode with its size, plus published reference rows. With --study the cells and the files are also
logged on the table's MLflow parent run."""

import argparse
import json
from pathlib import Path

from frozenrep.progress import setup_logging
from frozenrep.tables import (build_backbone_table, build_table, build_table2, plot_table, plot_table2, plot_table3,
                              table_metrics, write_backbone_table_markdown, write_table, write_table2_markdown,
                              write_table_json, write_table_markdown)

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--kind", choices=["table1", "table2", "table3", "table4"], default="table1")
parser.add_argument("--out", required=True, type=Path, help="the table (CSV)")
parser.add_argument("--json", type=Path, help="the same numbers as nested JSON (DVC metrics)")
parser.add_argument("--md", type=Path, help="the same numbers as a Markdown table")
parser.add_argument("--png", type=Path, help="the same numbers as a chart")
parser.add_argument("--title", default="", help="caption of the Markdown table and the chart")
parser.add_argument("--rungs", default="{}", help="table2: JSON {metric file: rung name}")
parser.add_argument("--published", default="[]", help="table3, table4: JSON list of published reference rows")
parser.add_argument("--study", help="MLflow experiment whose parent run of this table gets the cells (none: no logging)")
parser.add_argument("--tracking", default="{}", help="the profile's tracking settings as JSON")
parser.add_argument("metrics", nargs="+", type=Path)
args = parser.parse_args()
setup_logging()
if args.kind == "table2":
    table = build_table2(args.metrics, json.loads(args.rungs))
    markdown, plot = write_table2_markdown, plot_table2
elif args.kind in ("table3", "table4"):
    table = build_backbone_table(args.metrics, json.loads(args.published), args.kind)
    # backbone size as lines over the parameter count; backbone families as bars, like table 1
    markdown, plot = write_backbone_table_markdown, plot_table3 if args.kind == "table3" else plot_table
else:
    table = build_table(args.metrics)
    markdown, plot = write_table_markdown, plot_table
write_table(table, args.out)
if args.json:
    write_table_json(table, args.json)
if args.md:
    markdown(table, args.md, args.title)
if args.png:
    plot(table, args.png, args.title)
if args.study:
    from frozenrep.tracking import log_table, resolve_uri

    written = [path for path in (args.out, args.json, args.md, args.png) if path is not None]
    log_table(resolve_uri(json.loads(args.tracking).get("uri")), args.study, args.kind, table_metrics(table), written)
