"""Data loading on its own: can it keep up with the training step?

For each task's training set, generated in the real formats (COCO JPEG + json, ADE20K JPEG + PNG
masks, Kinetics H.264 mp4) at the embedded default's sizes or at sizes like the real datasets'
(``paper``: 640-px COCO images, 512-px ADE20K images cropped to 512, 240-px videos at 30 fps of
2.4 s, from which a 2-s clip is cut and sampled to 16 frames of 224 px; real Kinetics clips are
10 s long, so seeking costs more there), it measures:

- one sample in the main process, and for K400 its two halves: opening and decoding the clip's
  frames (PyAV through PyTorchVideo, single-threaded as in training) and the transform;
- samples per second through the training DataLoader (the training loop's own batch sampler,
  collate and per-sample seeds) with 0, 1, ... ``--workers`` worker processes.

With ``--step-rates FILE`` (a ``benchmarks/heads.py`` result) it also prints how many loader
workers each frozen training step would need, on that file's device, so as not to wait for data.

    python benchmarks/data_loading.py --sizes default paper --workers 2 --out benchmarks/results/<name>.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from heads import TASK_NAMES as TASKS, environment, save_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Generated sets standing in for the real datasets at their usual sizes (paper): what a loader
# worker decodes and transforms per sample is what it would do on COCO, ADE20K and Kinetics.
PAPER_DATA = {
    "coco": dict(num_train=16, num_val=2, image_size=640, num_categories=4, max_objects=8, min_radius=20,
                 max_radius=120, seed=0),
    "ade20k": dict(num_train=16, num_val=2, image_size=512, num_classes=6, max_regions=6, seed=0),
    "k400": dict(num_train=8, num_val=2, num_classes=4, image_size=240, num_frames=72, fps=30, seed=0),
}


def profile_config(size: str) -> dict:
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "params" / ("default.yaml" if size == "default" else "paper.yaml")).read_text())
    validate(config, str(REPO / "params/schemas/config.schema.yaml"), set_default=True)
    return config


def generate(task: str, size: str, root: Path, config: dict, limit: int) -> Path:
    from frozenrep.tasks import declaration

    settings = dict(PAPER_DATA[task]) if size == "paper" else dict(config["datasets"][task]["generate"])
    settings["num_train"], settings["num_val"] = min(settings["num_train"], limit), min(settings["num_val"], 2)
    out = root / f"{size}-{task}"
    declaration(task).module("synthetic").generate(out, **settings)
    return out


def per_sample(task: str, train_set, count: int) -> dict:
    """Milliseconds per training sample in this process (and, for K400, decode vs transform)."""
    times, decode, transform = [], [], []
    for k in range(count):
        key = (k % len(train_set), 1000 + k)
        start = time.perf_counter()
        train_set[key]
        times.append(time.perf_counter() - start)
        if task == "k400":
            d, t = _k400_halves(train_set, key)
            decode.append(d)
            transform.append(t)
    result = {"sample_ms": 1000 * statistics.median(times)}
    if task == "k400":
        result["decode_ms"] = 1000 * statistics.median(decode)
        result["transform_ms"] = 1000 * statistics.median(transform)
    return result


def _k400_halves(clips, key) -> tuple[float, float]:
    """The two halves of KineticsClips.__getitem__, timed apart: open + decode, then transform."""
    index, seed = key
    start = time.perf_counter()
    clip = clips.decode(index, seed)
    decoded = time.perf_counter()
    clips.augment(clip, seed)
    return decoded - start, time.perf_counter() - decoded


def through_loader(task, train_set, collate, batch_size: int, workers: int, batches: int) -> dict:
    """Samples per second out of the training loop's DataLoader (first batch, worker start-up, excluded)."""
    import torch
    from torch.utils.data import DataLoader

    from frozenrep.training import KeyedCollate, KeyedDataset, ResumableBatchSampler

    sampler = ResumableBatchSampler(len(train_set), batch_size, 0, 0, batches + 1)
    loader = DataLoader(KeyedDataset(train_set), batch_sampler=sampler, collate_fn=KeyedCollate(collate),
                        num_workers=workers, pin_memory=torch.cuda.is_available(),
                        persistent_workers=False)
    iterator = iter(loader)
    next(iterator)  # start-up: worker processes, imports, the first decode
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    return {"workers": workers, "batch_size": batch_size, "samples_per_s": batches * batch_size / seconds}


def step_rates(path: Path | None) -> dict:
    """Frozen training-step throughput per (size, task) from a heads.py result, with its device."""
    if path is None:
        return {}
    report = json.loads(Path(path).read_text())
    device = report["environment"].get("device", "?")
    return {(s["size"], s["task"]): (s["items_per_s"], device) for s in report["steps"] if s["mode"] == "frozen"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=["default", "paper"], default=["default"])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers tried: 0 up to this")
    parser.add_argument("--samples", type=int, default=12, help="samples timed one by one in this process")
    parser.add_argument("--batches", type=int, default=6, help="batches timed through each DataLoader")
    parser.add_argument("--step-rates", type=Path, default=None,
                        help="a benchmarks/heads.py result: the frozen step rates the loader must keep up with")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from frozenrep.runtime import set_up_cpu
    from frozenrep.tasks import get_task

    set_up_cpu(1)  # one thread per worker, as the loader workers of a training job get
    rates = step_rates(args.step_rates)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            config = profile_config(size)
            for name in args.tasks:
                task = get_task(name)
                task_config = {k: v for k, v in config[name].items() if k != "resources"}
                root = generate(name, size, Path(tmp), config, limit=max(args.samples, 16))
                train_set, _ = task.datasets(root, task_config)
                batch_size = task_config["train"]["batch_size"]
                row = {"size": size, "task": name, **per_sample(name, train_set, args.samples), "loader": []}
                for workers in range(args.workers + 1):
                    row["loader"].append(through_loader(name, train_set, task.collate, batch_size, workers,
                                                        args.batches))
                best = max(r["samples_per_s"] for r in row["loader"] if r["workers"] > 0) if args.workers else None
                per_worker = 1000 / row["sample_ms"]
                row["samples_per_s_per_worker"] = per_worker
                if (size, name) in rates:
                    needed, device = rates[(size, name)]
                    row["frozen_step_samples_per_s"] = {"device": device, "rate": needed,
                                                        "workers_needed": math.ceil(needed / per_worker)}
                results.append(row)
                loader = ", ".join(f"{r['workers']} workers {r['samples_per_s']:.1f}/s" for r in row["loader"])
                halves = (f" (decode {row['decode_ms']:.1f} ms + transform {row['transform_ms']:.1f} ms)"
                          if name == "k400" else "")
                print(f"{size:7s} {name:6s} {row['sample_ms']:7.1f} ms/sample{halves}; loader: {loader}"
                      + (f"; best {best:.1f}/s" if best else ""))
                if "frozen_step_samples_per_s" in row:
                    need = row["frozen_step_samples_per_s"]
                    print(f"{'':15s}the frozen step on {need['device']} takes {need['rate']:.1f} samples/s: "
                          f"{need['workers_needed']} workers of this machine's speed feed it")
    report = {"environment": environment("cpu"), "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                             for k, v in vars(args).items()},
              "cuda_pinned_memory": torch.cuda.is_available(), "results": results}
    save_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
