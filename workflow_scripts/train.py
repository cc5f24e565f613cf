"""Train one task head (task x backbone x mode x seed); resumes from the run directory's state.

Run it with ``torchrun --nproc_per_node=N`` to train data-parallel on N GPUs (or N CPU processes).
"""

import argparse
from pathlib import Path

from frozenrep.config import JobSpec
from frozenrep.jobs import run_training
from frozenrep.progress import setup_logging
from frozenrep.runtime import job_process

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--spec", required=True, help="job spec JSON (frozenrep.config.JobSpec)")
parser.add_argument("--checkpoint", required=True, type=Path)
parser.add_argument("--manifest", required=True, type=Path)
parser.add_argument("--out", required=True, type=Path, help="head weights (safetensors)")
parser.add_argument("--curve", type=Path, help="training curve (CSV), one row per logged step")
parser.add_argument("--plot", type=Path, help="training curve as a plot (PNG)")
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()
setup_logging()
with job_process(args.threads):
    run_training(JobSpec.from_json(args.spec), args.checkpoint, args.manifest, args.out, args.curve, args.plot)
