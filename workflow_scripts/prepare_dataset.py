"""Make a dataset ready: generate it, download the official archives, or verify an existing copy."""

import argparse
import json
import sys

from frozenrep.data import dataset_module, write_manifest
from frozenrep.data.coco import DatasetError
from frozenrep.download import DownloadError
from frozenrep.progress import setup_logging

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--dataset", required=True, help="dataset name (coco, ade20k, k400)")
parser.add_argument("--config", required=True, help="datasets.<name> of the profile, as JSON")
parser.add_argument("--manifest", required=True, help="manifest JSON to write when the data are verified")
args = parser.parse_args()
setup_logging()
cfg = json.loads(args.config)
module = dataset_module(args.dataset)
try:
    if cfg["source"] == "generate":
        module.generate(cfg["root"], **cfg["generate"])
    elif cfg["source"] == "download":
        module.download(cfg["root"], cfg["download"], retries=cfg["download"]["retries"])
    write_manifest(args.manifest, args.dataset, module.verify_layout(cfg["root"]), cfg["source"])
except (DatasetError, DownloadError, ValueError) as err:
    sys.exit(f"error: datasets.{args.dataset}: {err}")
