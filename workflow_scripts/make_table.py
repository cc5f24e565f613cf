"""Aggregate metric files into results/table1.csv (one row per backbone and mode) and its JSON twin."""

import argparse
from pathlib import Path

from frozenrep.progress import setup_logging
from frozenrep.tables import build_table, write_table, write_table_json

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--out", required=True, type=Path, help="the table (CSV)")
parser.add_argument("--json", type=Path, help="the same numbers as nested JSON (DVC metrics)")
parser.add_argument("metrics", nargs="+", type=Path)
args = parser.parse_args()
setup_logging()
table = build_table(args.metrics)
write_table(table, args.out)
if args.json:
    write_table_json(table, args.json)
