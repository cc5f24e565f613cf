"""Train one task head (task x backbone x mode x seed), then evaluate it on the validation split;
resumes from the run directory's state.

Run it with ``torchrun --nproc_per_node=N`` to train data-parallel on N GPUs (or N CPU processes);
the evaluation then splits the validation set over the N processes and computes the metric once
over every rank's predictions.
"""

import argparse
from pathlib import Path

from frozenrep.config import JobSpec
from frozenrep.jobs import Evaluation, run_training
from frozenrep.progress import setup_logging
from frozenrep.runtime import job_process

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--spec", required=True, help="job spec JSON (frozenrep.config.JobSpec)")
parser.add_argument("--checkpoint", required=True, type=Path)
parser.add_argument("--manifest", required=True, type=Path)
parser.add_argument("--out", required=True, type=Path, help="head weights (safetensors)")
parser.add_argument("--curve", type=Path, help="training curve (CSV), one row per logged step")
parser.add_argument("--plot", type=Path, help="training curve as a plot (PNG)")
parser.add_argument("--metrics", type=Path, help="evaluate the trained head and write its metrics JSON here")
parser.add_argument("--pictures", type=Path, default=None,
                    help="folder for validation samples drawn with their predictions (PNG; with --metrics)")
parser.add_argument("--num-pictures", type=int, default=4, help="how many samples --pictures draws")
parser.add_argument("--feature-cache", type=Path, default=None,
                    help="frozen-backbone feature cache folder for the evaluation (params: feature_cache)")
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()
if args.metrics is None and (args.pictures or args.feature_cache):
    parser.error("--pictures and --feature-cache belong to the evaluation: give --metrics too")
setup_logging()
evaluation = Evaluation(args.metrics, args.pictures, args.num_pictures, args.feature_cache) if args.metrics else None
with job_process(args.threads):
    run_training(JobSpec.from_json(args.spec), args.checkpoint, args.manifest, args.out, args.curve, args.plot,
                 evaluation)
