"""Frozen vs fine-tune cost of every task head, and the frozen backbone's forward as a floor.

For each task head at the paper's sizes (Swin-B; detection at 1024 x 1024, segmentation at a
512 x 512 crop, video at 16 x 224 x 224) and/or at the embedded default's sizes, this times
training steps of the real model through the training loop's own :class:`Optimisation` (AdamW,
clipping, bf16 autocast on CUDA), frozen and fine-tuned side by side in one run, and reports
step time, images (or clips) per second and peak memory, with the frozen/fine-tune ratios.

Every measurement runs in a fresh process, so that peak memory is that configuration's own (CUDA:
``max_memory_allocated``; CPU: the process's peak resident set, which includes the interpreter).
Inputs are random tensors of the task's batch shape: this measures the model, not data loading.

The backbone-forward section times the frozen backbone alone (no_grad, bf16 autocast on CUDA),
counts its FLOPs with ``torch.utils.flop_counter`` and reports the achieved rate, as a fraction of
the device's dense bf16 peak where the device is known (or ``--peak-tflops``).

``--variants`` adds frozen steps and forwards with the backbone changed: ``compile`` (its body
under ``torch.compile``), ``fused`` (timm's window attention through
``F.scaled_dot_product_attention``, which timm leaves off for Swin) or both. Each ratio then has
one entry per variant, against the same eager fine-tuned step.

    python benchmarks/heads.py --sizes paper default --out benchmarks/results/<name>.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import environment, save_report  # noqa: E402,F401 (the other benchmarks import them from here too)
from heads_report import engine_ratios, print_summary  # noqa: E402
from frozenrep.runtime import pick_device as _device, set_up_cpu  # noqa: E402
from frozenrep.tasks import TASK_NAMES  # noqa: E402

# Dense bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s (without sparsity).
PEAK_BF16_TFLOPS = {"H100 80GB HBM3": 989.4, "H100 SXM": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0,
                    "H200": 989.4, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}

# Per-task settings: the batch per device the profile trains with, the input size, the classes.
SIZES = {
    "paper": {
        "backbone": "swin-b-in1k",
        "coco": {"batch": 2, "image": 1024, "classes": 81},
        "ade20k": {"batch": 2, "image": 512, "classes": 150},
        "k400": {"batch": 8, "image": 224, "frames": 16, "classes": 400},
        "forward": [{"batch": 256, "image": 224}, {"batch": 2, "image": 1024}],
        "profile": "params/paper.yaml",
    },
    "default": {
        "backbone": "tiny-swin-none",
        "coco": {"batch": 4, "image": 128, "classes": 5},
        "ade20k": {"batch": 4, "image": 128, "classes": 6},
        "k400": {"batch": 8, "image": 64, "frames": 8, "classes": 4},
        "forward": [{"batch": 64, "image": 128}],
        "profile": "params/default.yaml",
    },
    # The two detection engines side by side (--engines): a Swin-T (random weights) and two 512 x 512
    # images, with the paper profile's detection head on both.
    "engines": {
        "backbone": "swin-b-in1k",
        "arch": "swin_tiny_patch4_window7_224",
        "coco": {"batch": 2, "image": 512, "classes": 81},
        "forward": [],
        "profile": "params/paper.yaml",
    },
}

ENGINES = ("torchvision", "detectron2")  # coco.engine


def _profile(size: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / SIZES[size]["profile"]).read_text())


def _backbone(size: str, mode: str):
    from frozenrep.backbones import BackboneAdapter, features_from_model
    from frozenrep.checkpoints import create_model, load_registry

    registry = load_registry(ROOT / "params" / "checkpoints.yaml")
    entry = registry[SIZES[size]["backbone"]]
    if "arch" in SIZES[size]:  # the entry's input statistics on another timm architecture
        entry = dataclasses.replace(entry, arch=SIZES[size]["arch"], arch_kwargs={})
    # Random weights: speed and memory do not depend on the values.
    return BackboneAdapter(features_from_model(create_model(entry)), mode=mode), entry


def _model_and_batch(task: str, size: str, mode: str, device, engine: str = "torchvision"):
    """The task's model as the training job builds it (COCO's on detection ``engine``), and one random
    batch of its shape."""
    import torch

    from frozenrep.config import config_from

    spec, profile = SIZES[size][task], _profile(size)
    torch.manual_seed(0)  # the same initial weights in both modes: the heads' work depends on them
    backbone, entry = _backbone(size, mode)
    gen = torch.Generator().manual_seed(0)
    b, s, k = spec["batch"], spec["image"], spec["classes"]
    if task == "coco":
        from types import SimpleNamespace

        from frozenrep.heads.coco import detection_loss
        from frozenrep.tasks.coco import build_head

        head = {**profile["coco"]["head"], "min_size": s, "max_size": s}
        model = build_head(backbone, SimpleNamespace(num_classes=k), {"engine": engine, "head": head}, entry)
        images, targets = [], []
        for _ in range(b):
            n = 8
            xy = torch.rand(n, 2, generator=gen) * s * 0.7
            wh = s * 0.05 + torch.rand(n, 2, generator=gen) * s * 0.25
            boxes = torch.cat([xy, xy + wh], 1).clamp(max=s - 1)
            masks = torch.zeros(n, s, s, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
                masks[i, y0:y1, x0:x1] = 1
            images.append(torch.rand(3, s, s, generator=gen))
            targets.append({"boxes": boxes, "labels": torch.randint(1, k, (n,), generator=gen), "masks": masks})
        return model, detection_loss, (images, targets), b
    if task == "ade20k":
        from frozenrep.heads.ade20k import Mask2FormerSegmenter, SegmentationHeadConfig, segmentation_loss

        head = config_from(SegmentationHeadConfig, profile["ade20k"]["head"], "ade20k.head")
        model = Mask2FormerSegmenter(backbone, k, head, entry.input_mean, entry.input_std)
        cells = torch.randint(0, k, (b, 4, 4), generator=gen)  # 16 regions per image, a few classes each
        labels = torch.nn.functional.interpolate(cells[:, None].float(), size=(s, s), mode="nearest")[:, 0].long()
        return model, segmentation_loss, (torch.rand(b, 3, s, s, generator=gen), labels), b
    if task == "k400":
        from frozenrep.heads.k400 import VideoClassifier, VideoHeadConfig, video_loss

        head = config_from(VideoHeadConfig, profile["k400"]["head"], "k400.head")
        model = VideoClassifier(backbone, k, head, entry.input_mean, entry.input_std)
        clips = torch.rand(b, 3, spec["frames"], s, s, generator=gen)
        return model, video_loss, (clips, torch.randint(0, k, (b,), generator=gen)), b
    raise KeyError(task)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


VARIANTS = ("eager", "compile", "fused", "compile+fused")


def _before_build(variant: str) -> None:
    """``fused``: timm's Swin window attention through ``F.scaled_dot_product_attention`` (timm
    leaves it off for Swin, as experimental); it is read when the model is built."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown backbone variant {variant!r}; known: {VARIANTS}")
    if "fused" in variant:
        from timm.layers import set_fused_attn

        set_fused_attn(True, experimental=True)


def _after_build(model, variant: str) -> dict:
    """``compile``: the frozen backbone bodies in ``model`` under ``torch.compile`` (heads stay
    eager). Returns what was changed, counted, so that a result shows the variant took effect."""
    import torch

    from frozenrep.backbones import BackboneAdapter

    adapters = [m for m in model.modules() if isinstance(m, BackboneAdapter) and m.frozen]
    fused = sum(1 for m in model.modules() if getattr(m, "fused_attn", False) is True)
    if "compile" in variant:
        for adapter in adapters:
            adapter.body = torch.compile(adapter.body)
    return {"variant": variant, "fused_attention_modules": fused,
            "compiled_bodies": len(adapters) if "compile" in variant else 0}


def train_config(task: str, size: str, steps: int):
    """The profile's training settings for ``task``, for ``steps`` steps without learning-rate warm-up."""
    from frozenrep.config import config_from
    from frozenrep.training import TrainConfig

    train_cfg = {**_profile(size)[task]["train"], "steps": steps, "warmup_steps": 0}
    return config_from(TrainConfig, train_cfg, f"{task}.train")


def measure_step(task: str, size: str, mode: str, device_name: str, steps: int, warmup: int,
                 variant: str = "eager", engine: str = "torchvision") -> dict:
    """Median training-step time, throughput and peak memory of one (task, size, mode), its frozen
    backbone in ``variant`` (see :data:`VARIANTS`), COCO's on detection ``engine``."""
    import torch

    from frozenrep.training import Optimisation, to_device

    device = _device(device_name)
    cfg = train_config(task, size, steps + warmup)
    _before_build(variant)
    model, loss_fn, batch, items = _model_and_batch(task, size, mode, device, engine)
    model.to(device).train()
    applied = _after_build(model, variant)
    batch = to_device(batch, device)
    opt = Optimisation(model, cfg, device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        opt.step(model, loss_fn, batch, where=f"benchmark step {i}")
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    return {"task": task, "size": size, "mode": mode, **applied, "engine": engine if task == "coco" else None,
            "batch": items, "steps": steps,
            "step_s_median": median, "step_s_min": times[0], "items_per_s": items / median,
            "peak_mem_mb": _peak_mb(device), "trainable_params": trainable, "total_params": total,
            "amp_dtype": str(opt.amp_dtype).replace("torch.", "") if opt.amp_dtype else "float32"}


def measure_forward(size: str, device_name: str, steps: int, warmup: int, peak_tflops: float | None,
                    batch: int, image: int, variant: str = "eager") -> dict:
    """The frozen backbone's forward alone, in ``variant``: time, FLOPs and achieved rate."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = _device(device_name)
    spec = {"batch": batch, "image": image}
    _before_build(variant)
    backbone, _ = _backbone(size, "frozen")
    backbone.to(device)
    x = torch.rand(spec["batch"], 3, spec["image"], spec["image"], device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def forward():
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            return backbone(x)

    # Counted eagerly, before any compiling, and with the attention unfused: FlopCounterMode counts
    # scaled_dot_product_attention apart from the matrix products it replaces, and every variant's
    # rate should be of the same count.
    fused = [m for m in backbone.modules() if getattr(m, "fused_attn", False) is True]
    for m in fused:
        m.fused_attn = False
    with FlopCounterMode(display=False) as counter:
        forward()
    for m in fused:
        m.fused_attn = True
    flops = counter.get_total_flops()
    applied = _after_build(backbone, variant)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        forward()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    if peak_tflops is None and device.type == "cuda":
        peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    achieved = flops / median / 1e12
    return {"size": size, **applied, "compiled": "compile" in variant, "batch": spec["batch"], "image": spec["image"], "gflops_per_image": flops / spec["batch"] / 1e9,
            "forward_s_median": median, "images_per_s": spec["batch"] / median, "achieved_tflops": achieved,
            "peak_tflops": peak_tflops, "fraction_of_peak": achieved / peak_tflops if peak_tflops else None,
            "dtype": str(dtype).replace("torch.", "")}


def run_child(script: str, job: dict) -> dict:
    """Run ``script --child JOB`` in a fresh interpreter; its JSON comes back on the last stdout line
    (or the job with the last line of its error)."""
    cmd = [sys.executable, script, "--child", json.dumps(job)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        return {**job, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _in_child(kind: str, **kwargs) -> dict:
    result = run_child(__file__, {"kind": kind, **kwargs})
    result.pop("kind", None)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["default"])
    parser.add_argument("--tasks", nargs="*", choices=TASK_NAMES, default=list(TASK_NAMES),
                        help="task heads whose steps are timed (none: the backbone forward alone)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when visible), cpu or cuda[:N]")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, if unknown")
    parser.add_argument("--variants", nargs="*", choices=VARIANTS[1:], default=[],
                        help="also time the frozen steps and the forward with the backbone in these variants: "
                             "compile (torch.compile), fused (timm's fused window attention), compile+fused")
    parser.add_argument("--compile", action="store_true", help="the same as --variants compile")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=["torchvision"],
                        help="COCO's detection engines (coco.engine); with both, their steps side by side")
    parser.add_argument("--no-forward", action="store_true", help="leave out the backbone-forward section")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    set_up_cpu(args.threads)  # the CPU arithmetic of the project's jobs
    if args.child:
        job = json.loads(args.child)
        kind = job.pop("kind")
        result = measure_step(**job) if kind == "step" else measure_forward(**job)
        print(json.dumps(result))
        return 0

    variants = ["eager"] + list(dict.fromkeys(args.variants + (["compile"] if args.compile else [])))
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "out")}
    report = {"environment": environment(args.device), "settings": settings, "sizes": {k: SIZES[k] for k in args.sizes},
              "steps": [], "forward": [], "ratios": [], "engines": []}
    env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    os.environ.update(env)
    for size in args.sizes:
        for task, engine in [(t, e) for t in args.tasks for e in (args.engines if t == "coco" else ["torchvision"])]:
            runs = {}  # the fine-tuned step is eager: variants are of the frozen backbone
            for mode, variant in [("frozen", "eager"), ("finetune", "eager")] + [("frozen", v) for v in variants[1:]]:
                r = _in_child("step", task=task, size=size, mode=mode, device_name=args.device,
                              steps=args.steps, warmup=args.warmup, variant=variant, engine=engine)
                report["steps"].append(r)
                runs[mode if mode == "finetune" else variant] = r
                print(json.dumps(r), flush=True)
                save_report(args.out, report, quiet=True)
            t = runs["finetune"]
            if "error" not in t and "error" not in runs["eager"]:
                f = runs["eager"]
                ratio = {"task": task, "size": size, "engine": engine if task == "coco" else None,
                         "step_time_ratio": f["step_s_median"] / t["step_s_median"],
                         "peak_mem_ratio": f["peak_mem_mb"] / t["peak_mem_mb"],
                         "variants": {v: {"step_time_ratio": r["step_s_median"] / t["step_s_median"],
                                          "peak_mem_ratio": r["peak_mem_mb"] / t["peak_mem_mb"]}
                                      for v, r in runs.items() if v != "finetune" and "error" not in r}}
                report["ratios"].append(ratio)
        report["engines"] += engine_ratios(report["steps"], size)
        for spec in [] if args.no_forward else SIZES[size]["forward"]:
            for variant in variants:
                r = _in_child("forward", size=size, device_name=args.device, steps=args.steps, warmup=args.warmup,
                              peak_tflops=args.peak_tflops, variant=variant, **spec)
                report["forward"].append(r)
                print(json.dumps(r), flush=True)
                save_report(args.out, report, quiet=True)

    print_summary(report, engines=len(args.engines) > 1)
    save_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
