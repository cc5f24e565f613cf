"""Aggregate metric files into results/table1.csv (one row per backbone and mode)."""

import argparse
from pathlib import Path

from frozenrep.progress import setup_logging
from frozenrep.tables import build_table, write_table

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--out", required=True, type=Path)
parser.add_argument("metrics", nargs="+", type=Path)
args = parser.parse_args()
setup_logging()
write_table(build_table(args.metrics), args.out)
