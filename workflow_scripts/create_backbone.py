"""Create a locally made backbone checkpoint (embedded default) and record its sha256 beside it."""

import argparse
import json

from frozenrep.local_backbones import create_local_backbone
from frozenrep.progress import setup_logging

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--entry", required=True, help="the registry entry as JSON")
parser.add_argument("--out", required=True, help="safetensors file to write")
args = parser.parse_args()
setup_logging()
create_local_backbone(json.loads(args.entry), args.out)
