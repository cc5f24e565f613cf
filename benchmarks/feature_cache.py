"""Evaluation with and without the frozen-backbone feature cache.

For the detection and video heads (the backbone's share of their evaluation is the smallest and
the largest), at the paper's or the embedded default's sizes: inference over ``--samples`` random
inputs three times, in fresh processes per setting: without the cache; with an empty cache (every
sample computed and written); with the cache the previous pass filled (every sample read back).
The warm/no-cache ratio is the headline figure. ``--where`` picks a disk cache (the one the
workflow uses, under ``--root``) and/or the in-memory one.

    python benchmarks/feature_cache.py --sizes paper --out benchmarks/results/<name>.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from heads import SIZES, _device, _model_and_batch, _sync, environment, run_child, save_report  # noqa: E402


def measure(task: str, size: str, device_name: str, samples: int, where: str, root: str) -> dict:
    """Times of the three passes (no cache, cold, warm) over the same inputs, in one process."""
    import torch

    from frozenrep.feature_cache import FeatureCache

    device = _device(device_name)
    model, _, batch, per_batch = _model_and_batch(task, size, "frozen", device)
    model.to(device).eval()
    inputs = batch[0]
    batches = []
    gen = torch.Generator().manual_seed(1)
    for _ in range(max(samples // per_batch, 1)):  # distinct inputs: no hits inside one pass
        if isinstance(inputs, list):
            batches.append([torch.rand(x.shape, generator=gen).to(device) for x in inputs])
        else:
            batches.append(torch.rand(inputs.shape, generator=gen).to(device))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def run_pass() -> float:
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            for b in batches:
                model(b)
        _sync(device)
        return time.perf_counter() - start

    adapter = model.backbone.body if task == "coco" else model.backbone
    run_pass()  # warm-up: kernels, allocator
    plain = run_pass()
    # As the head job's evaluation attaches it: only the levels the head reads (the video head: one).
    cache = FeatureCache("b" * 64, root if where == "disk" else None, getattr(model, "backbone_levels", None))
    adapter.use_cache(cache)
    cold = run_pass()
    warm = run_pass()
    n = len(batches) * per_batch
    return {"task": task, "size": size, "where": where, "levels": list(cache.levels or ["all"]),
            "samples": n, "no_cache_s": plain, "cold_s": cold,
            "warm_s": warm, "speedup_warm": plain / warm, "hits": cache.hits, "misses": cache.misses,
            "disk_mb": (sum(f.stat().st_size for f in Path(root).rglob("*.feat")) / 2**20) if where == "disk" else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["default"])
    parser.add_argument("--tasks", nargs="+", choices=["coco", "k400"], default=["coco", "k400"])
    parser.add_argument("--where", nargs="+", choices=["disk", "memory"], default=["disk", "memory"])
    parser.add_argument("--samples", type=int, default=32, help="images (coco) or clips (k400) per pass")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--root", type=Path, default=None, help="disk cache folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(**json.loads(args.child))))
        return 0
    report = {"environment": environment(args.device), "settings": {k: str(v) for k, v in vars(args).items()},
              "results": []}
    for size in args.sizes:
        for task in args.tasks:
            for where in args.where:
                root = Path(tempfile.mkdtemp(prefix="featcache.", dir=args.root))
                job = dict(task=task, size=size, device_name=args.device, samples=args.samples, where=where,
                           root=str(root))
                r = run_child(__file__, job)
                shutil.rmtree(root, ignore_errors=True)
                report["results"].append(r)
                print(json.dumps(r), flush=True)
                save_report(args.out, report, quiet=True)
    print(f"\n{report['environment']['device']}, torch {report['environment']['torch']}")
    print(f"{'size':8} {'task':6} {'cache':7} {'levels':8} {'samples':>7} {'none s':>8} {'cold s':>8} {'warm s':>8} {'warm x':>7}")
    for r in report["results"]:
        if "error" in r:
            print(f"{r['size']:8} {r['task']:6} {r['where']:7} error: {r['error']}")
            continue
        print(f"{r['size']:8} {r['task']:6} {r['where']:7} {','.join(r['levels']):8} {r['samples']:7d} {r['no_cache_s']:8.3f} "
              f"{r['cold_s']:8.3f} {r['warm_s']:8.3f} {r['speedup_warm']:7.2f}")
    save_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
