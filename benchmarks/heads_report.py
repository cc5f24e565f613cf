"""What ``heads.py`` prints at the end, and its torchvision/Detectron2 ratios (kept apart from the measuring)."""

from __future__ import annotations


def engine_ratios(steps: list[dict], size: str) -> list[dict]:
    """COCO's torchvision step over its Detectron2 step, per mode (eager backbone), where both ran at ``size``."""
    by = {(r["engine"], r["mode"]): r for r in steps
          if r.get("task") == "coco" and r.get("size") == size and "error" not in r and r["variant"] == "eager"}
    return [{"size": size, "mode": mode,
             "step_time_ratio": by["torchvision", mode]["step_s_median"] / by["detectron2", mode]["step_s_median"],
             "peak_mem_ratio": by["torchvision", mode]["peak_mem_mb"] / by["detectron2", mode]["peak_mem_mb"]}
            for mode in ("frozen", "finetune") if ("torchvision", mode) in by and ("detectron2", mode) in by]


def print_summary(report: dict, engines: bool) -> None:
    """The report's figures as a table, then the ratios, then the forward rates."""
    print(f"\n{report['environment']['device']}, torch {report['environment']['torch']}")
    print(f"{'size':8} {'task':7} {'mode':20} {'step ms':>9} {'items/s':>9} {'peak MB':>9} {'trainable':>11}")
    for r in report["steps"]:
        if "error" in r:
            print(f"{r['size']:8} {r['task']:7} {r['mode'] + ' ' + r.get('variant', ''):20} error: {r['error']}")
            continue
        mode = r["mode"] + ("" if r["variant"] == "eager" else f" ({r['variant']})")
        mode += f" {r['engine']}" if engines and r["engine"] else ""
        print(f"{r['size']:8} {r['task']:7} {mode:20} {r['step_s_median'] * 1e3:9.1f} {r['items_per_s']:9.2f} "
              f"{r['peak_mem_mb']:9.0f} {r['trainable_params']:11,d}")
    for r in report["ratios"]:
        others = "".join(f"; {v}: {x['step_time_ratio']:.2f} / {x['peak_mem_ratio']:.2f}"
                         for v, x in r["variants"].items() if v != "eager")
        engine = f" {r['engine']}" if engines and r.get("engine") else ""
        print(f"frozen/fine-tune {r['size']:8} {r['task']:7}{engine} step time {r['step_time_ratio']:.2f}  "
              f"peak memory {r['peak_mem_ratio']:.2f}{others}")
    for r in report["engines"]:
        print(f"torchvision/detectron2 {r['size']:8} {r['mode']:8} step time {r['step_time_ratio']:.2f}  "
              f"peak memory {r['peak_mem_ratio']:.2f}")
    for r in report["forward"]:
        if "error" in r:
            print(f"backbone forward {r['size']} {r['batch']}x{r['image']}px: error: {r['error']}")
            continue
        frac = f"{100 * r['fraction_of_peak']:.1f} % of {r['peak_tflops']} TFLOP/s" if r["fraction_of_peak"] else "peak unknown"
        variant = "" if r.get("variant", "eager") == "eager" else f" {r['variant']}"
        print(f"backbone forward {r['size']:8} {r['batch']}x{r['image']}px{variant}: "
              f"{r['gflops_per_image']:.2f} GFLOP/image, {r['images_per_s']:.1f} img/s, "
              f"{r['achieved_tflops']:.3f} TFLOP/s ({frac})")
