"""One shared frozen backbone for all three heads, against each head running its own backbone.

At the paper's sizes (Swin-B, 16 frames of 224 x 224) and/or the embedded default's (tiny Swin,
8 frames of 64 x 64), with random weights and the profile's head settings: the time to predict a
clip with all three heads (detection and segmentation on every frame, the action of the clip)

* separately: each head's own inference on the frames, so the backbone runs three times;
* shared: :meth:`frozenrep.multitask.SharedBackbone.predict`, one backbone pass;

and the backbone's forward alone. The detection head's transform is set to the frame size, so
that both paths see the same input. The saving is the headline figure; at most it is two
backbone passes. On CUDA both paths run under bf16 autocast.

    python benchmarks/multitask.py --sizes default paper --out benchmarks/results/<name>.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from heads import SIZES, _device, _profile, _sync, environment, save_report  # noqa: E402


def build(size: str, device):
    """The shared model (three heads on one frozen body) at a size's settings, and its frames."""
    import torch

    from frozenrep.backbones import features_from_model
    from frozenrep.checkpoints import create_model, load_registry
    from frozenrep.config import config_from
    from frozenrep.heads.ade20k import Mask2FormerSegmenter, SegmentationHeadConfig
    from frozenrep.heads.coco import DetectionHeadConfig, build_mask_rcnn
    from frozenrep.heads.k400 import VideoClassifier, VideoHeadConfig
    from frozenrep.multitask import SharedBackbone, adapter_of

    spec, profile = SIZES[size], _profile(size)
    entry = load_registry(Path(__file__).resolve().parents[1] / "params" / "checkpoints.yaml")[spec["backbone"]]
    torch.manual_seed(0)
    body = features_from_model(create_model(entry))  # random weights: the cost does not depend on them
    frames, image = spec["k400"]["frames"], spec["k400"]["image"]
    mean, std = entry.input_mean, entry.input_std
    coco = config_from(DetectionHeadConfig, {**profile["coco"]["head"], "min_size": image, "max_size": image},
                          "coco.head")
    heads = {
        "coco": build_mask_rcnn(adapter_of(body), spec["coco"]["classes"], coco, mean, std),
        "ade20k": Mask2FormerSegmenter(adapter_of(body), spec["ade20k"]["classes"],
                                       config_from(SegmentationHeadConfig, profile["ade20k"]["head"], "ade20k.head"),
                                       mean, std),
        "k400": VideoClassifier(adapter_of(body), spec["k400"]["classes"],
                                config_from(VideoHeadConfig, profile["k400"]["head"], "k400.head"), mean, std),
    }
    model = SharedBackbone(body, heads, entry).to(device)
    clip = torch.rand(frames, 3, image, image, generator=torch.Generator().manual_seed(0)).to(device)
    return model, clip


def separately(model, clip) -> None:
    """Each head's own inference path: three backbone passes."""
    model.heads["coco"](list(clip))
    model.heads["ade20k"].scores(clip)
    model.heads["k400"](clip.permute(1, 0, 2, 3)[None])


def measure(size: str, device_name: str, repeats: int, warmup: int) -> dict:
    import torch

    device = _device(device_name)
    model, clip = build(size, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    inputs = (clip - model.mean) / model.std
    paths = {"separate": lambda: separately(model, clip), "shared": lambda: model.predict(clip),
             "backbone": lambda: model.body_features(inputs)}
    times: dict[str, list[float]] = {name: [] for name in paths}
    passes: dict[str, int] = {}
    calls: list[int] = []
    hook = model.body.register_forward_hook(lambda *_: calls.append(1))
    with torch.inference_mode(), autocast:
        for name, run in paths.items():  # the warm-up's first round counts the backbone's forwards
            calls.clear()
            run()
            passes[name] = len(calls)
        hook.remove()
        for _ in range(warmup):
            for run in paths.values():
                run()
        for _ in range(repeats):  # interleaved, so drifts in the machine's speed hit all paths alike
            for name, run in paths.items():
                _sync(device)
                start = time.perf_counter()
                run()
                _sync(device)
                times[name].append(time.perf_counter() - start)
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    frames, image = clip.shape[0], clip.shape[-1]
    result = {"size": size, "backbone": SIZES[size]["backbone"], "frames": frames, "image": image,
              "repeats": repeats, "backbone_passes": passes, "separate_ms": round(ms["separate"], 1), "shared_ms": round(ms["shared"], 1),
              "backbone_ms": round(ms["backbone"], 1), "speedup": round(ms["separate"] / ms["shared"], 2),
              "saved_ms": round(ms["separate"] - ms["shared"], 1),
              "backbone_share_of_separate": round(3 * ms["backbone"] / ms["separate"], 3)}
    print(f"{size:8s} {frames} x {image} px: three heads separately {ms['separate']:.1f} ms, shared "
          f"{ms['shared']:.1f} ms ({result['speedup']:.2f}x); one backbone pass {ms['backbone']:.1f} ms", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["default"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from frozenrep.runtime import set_up_cpu

    set_up_cpu(args.threads)  # the CPU arithmetic of the project's jobs
    results = [measure(size, args.device, args.repeats, args.warmup) for size in args.sizes]
    save_report(args.out, {"benchmark": "multitask", "environment": environment(args.device),
                           "settings": vars(args) | {"out": str(args.out) if args.out else None},
                           "results": results})
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
