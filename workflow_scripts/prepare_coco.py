"""Make data/coco ready: generate it, download the official archives, or verify an existing copy."""

import argparse
import json
import sys

from frozenrep.data import coco
from frozenrep.download import DownloadError
from frozenrep.progress import setup_logging

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="datasets.coco of the profile, as JSON")
parser.add_argument("--manifest", required=True, help="manifest JSON to write when the data are verified")
args = parser.parse_args()
setup_logging()
cfg = json.loads(args.config)
try:
    if cfg["source"] == "generate":
        coco.generate(cfg["root"], **cfg["generate"])
    elif cfg["source"] == "download":
        dl = cfg["download"]
        coco.download(cfg["root"], dl["files"], dl["downloads"], retries=dl["retries"])
    coco.write_manifest(args.manifest, coco.verify_layout(cfg["root"]), cfg["source"])
except (coco.DatasetError, DownloadError, ValueError) as err:
    sys.exit(f"error: datasets.coco: {err}")
