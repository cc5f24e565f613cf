"""Evaluate one trained head on the validation split and write its metrics JSON.

Run it with ``torchrun --nproc_per_node=N`` to split the validation set over N GPUs (or N CPU
processes); the metric is computed once over every rank's predictions.
"""

import argparse
from pathlib import Path

from frozenrep.config import JobSpec
from frozenrep.jobs import run_evaluation
from frozenrep.progress import setup_logging
from frozenrep.runtime import job_process

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--spec", required=True, help="job spec JSON (frozenrep.config.JobSpec)")
parser.add_argument("--checkpoint", required=True, type=Path)
parser.add_argument("--manifest", required=True, type=Path)
parser.add_argument("--head", required=True, type=Path)
parser.add_argument("--out", required=True, type=Path, help="metrics JSON")
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--feature-cache", type=Path, default=None,
                    help="frozen-backbone feature cache folder (params: feature_cache)")
parser.add_argument("--pictures", type=Path, default=None,
                    help="folder for validation samples drawn with their predictions (PNG)")
parser.add_argument("--num-pictures", type=int, default=4, help="how many samples --pictures draws")
args = parser.parse_args()
setup_logging()
with job_process(args.threads):
    run_evaluation(JobSpec.from_json(args.spec), args.checkpoint, args.manifest, args.head, args.out,
                   feature_cache=args.feature_cache, pictures=args.pictures, num_pictures=args.num_pictures)
