"""Fetch one registry checkpoint (download, or copy a file: source), verify its sha256, rename atomically."""

import argparse
import json
import sys

from frozenrep.checkpoints import CheckpointEntry, CheckpointError, fetch_checkpoint
from frozenrep.download import DownloadError
from frozenrep.progress import setup_logging

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--entry", required=True, help="the registry entry as JSON")
parser.add_argument("--out", required=True, help="where the verified file goes")
parser.add_argument("--retries", type=int, default=5)
args = parser.parse_args()
setup_logging()
entry = CheckpointEntry.from_dict(json.loads(args.entry))
try:
    fetch_checkpoint(entry, args.out, retries=args.retries)
except (DownloadError, CheckpointError) as err:
    sys.exit(f"error: checkpoint {entry.name}: {err}")
