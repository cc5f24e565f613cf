"""Make a dataset ready: generate it, download the official archives, or verify an existing copy."""

import argparse
import json
import sys

from frozenrep.data import DatasetError, write_manifest
from frozenrep.download import DownloadError
from frozenrep.progress import setup_logging
from frozenrep.tasks import TASK_NAMES, declaration

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--dataset", required=True, choices=TASK_NAMES, help="dataset name (each task's own)")
parser.add_argument("--config", required=True, help="datasets.<name> of the profile, as JSON")
parser.add_argument("--manifest", required=True, help="manifest JSON to write when the data are verified")
args = parser.parse_args()
setup_logging()
cfg = json.loads(args.config)
task = declaration(args.dataset)
try:
    if cfg["source"] == "generate":
        task.module("synthetic").generate(cfg["root"], **cfg["generate"])
    elif cfg["source"] == "download":
        task.module("data").download(cfg["root"], cfg["download"], retries=cfg["download"]["retries"])
    write_manifest(args.manifest, args.dataset, task.module("data").verify_layout(cfg["root"]), cfg["source"])
except (DatasetError, DownloadError, ValueError) as err:
    sys.exit(f"error: datasets.{args.dataset}: {err}")
