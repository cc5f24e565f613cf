"""Create a locally made backbone checkpoint (embedded default: random init or pretraining) and
record its sha256 beside it."""

import argparse
import json

from frozenrep.local_backbones import create_local_backbone
from frozenrep.progress import setup_logging
from frozenrep.runtime import set_up_cpu

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--entry", required=True, help="the registry entry as JSON")
parser.add_argument("--out", required=True, help="safetensors file to write")
parser.add_argument("--tracking", default="{}", help="the profile's tracking settings as JSON (pretraining runs)")
parser.add_argument("--study", default="pretraining", help="MLflow experiment of the pretraining run")
parser.add_argument("--threads", type=int, default=None, help="intra-op threads (Snakemake's threads)")
args = parser.parse_args()
setup_logging()
set_up_cpu(args.threads)
create_local_backbone(json.loads(args.entry), args.out, json.loads(args.tracking), args.study)
