"""Aggregate metric files into results/table1.csv (one row per backbone and mode) and its twins:
nested JSON (DVC metrics), Markdown and a bar chart. With --study the cells and the files are
also logged on the table's MLflow parent run."""

import argparse
import json
from pathlib import Path

from frozenrep.progress import setup_logging
from frozenrep.tables import (build_table, plot_table, table_metrics, write_table, write_table_json,
                              write_table_markdown)

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--out", required=True, type=Path, help="the table (CSV)")
parser.add_argument("--json", type=Path, help="the same numbers as nested JSON (DVC metrics)")
parser.add_argument("--md", type=Path, help="the same numbers as a Markdown table")
parser.add_argument("--png", type=Path, help="the same numbers as a bar chart")
parser.add_argument("--title", default="", help="caption of the Markdown table and the chart")
parser.add_argument("--study", help="MLflow experiment whose table1 parent run gets the cells (none: no logging)")
parser.add_argument("--tracking", default="{}", help="the profile's tracking settings as JSON")
parser.add_argument("metrics", nargs="+", type=Path)
args = parser.parse_args()
setup_logging()
table = build_table(args.metrics)
write_table(table, args.out)
if args.json:
    write_table_json(table, args.json)
if args.md:
    write_table_markdown(table, args.md, args.title)
if args.png:
    plot_table(table, args.png, args.title)
if args.study:
    from frozenrep.tracking import log_table, resolve_uri

    written = [path for path in (args.out, args.json, args.md, args.png) if path is not None]
    log_table(resolve_uri(json.loads(args.tracking).get("uri")), args.study, args.out.stem, table_metrics(table),
              written)
