"""``frozenrep-predict-video``: every frozen head of one backbone on a video, with one backbone pass.

    frozenrep-predict-video --backbone tiny-swin-supervised --seed 0 VIDEO.mp4 [--out prediction.json]

The heads are the ones the workflow trained in the workspace (``--root``) for the profile
(``--configfile``); the clip is cut from the video as the profile's video task cuts a test view.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from frozenrep.checkpoints import load_registry
from frozenrep.config import SCHEMA_FILE, load_profile
from frozenrep.io import write_json_atomic
from frozenrep.multitask import MultiTaskError, load_shared, summarise
from frozenrep.runtime import pick_device
from frozenrep.tasks import CLIP_TASK, declaration


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="frozenrep-predict-video",
                                     description="All frozen heads of one backbone on a video, one backbone pass.")
    parser.add_argument("video", type=Path, help="a video file (mp4, ...) PyAV can decode")
    parser.add_argument("--configfile", type=Path, default=Path("params/default.yaml"), help="the profile")
    parser.add_argument("--backbone", required=True, help="a backbone of the profile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=Path("."), help="the workspace the workflow ran in")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="detections shown")
    parser.add_argument("--out", type=Path, help="write the summary here (JSON) instead of printing it")
    args = parser.parse_args(argv)
    try:
        config = load_profile(args.root / args.configfile, SCHEMA_FILE)
        registry = load_registry(args.root / config["registry"])
        device = pick_device(config["device"])
        model, names = load_shared(config, registry, args.backbone, args.seed, args.root, device)
        clip = declaration(CLIP_TASK).module("tasks").clip_from_file(args.video, config[CLIP_TASK])
        prediction = model.predict(clip.permute(1, 0, 2, 3).to(device))
    except (MultiTaskError, OSError, KeyError, ValueError, RuntimeError) as err:
        print(f"frozenrep-predict-video: {err}", file=sys.stderr)
        return 1
    summary = {"video": str(args.video), "backbone": args.backbone, "seed": args.seed, "frames": clip.shape[1],
               "backbone_passes": model.body_passes, **summarise(prediction, names, args.score_threshold)}
    if args.out:
        write_json_atomic(args.out, summary)
    else:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
