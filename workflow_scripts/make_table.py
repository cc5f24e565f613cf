"""Aggregate metric files into results/table1.csv (one row per backbone and mode) and its twins:
nested JSON (DVC metrics), Markdown and a bar chart."""

import argparse
from pathlib import Path

from frozenrep.progress import setup_logging
from frozenrep.tables import build_table, plot_table, write_table, write_table_json, write_table_markdown

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--out", required=True, type=Path, help="the table (CSV)")
parser.add_argument("--json", type=Path, help="the same numbers as nested JSON (DVC metrics)")
parser.add_argument("--md", type=Path, help="the same numbers as a Markdown table")
parser.add_argument("--png", type=Path, help="the same numbers as a bar chart")
parser.add_argument("--title", default="", help="caption of the Markdown table and the chart")
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
