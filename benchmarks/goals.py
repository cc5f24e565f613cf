"""The frozen setting's performance goals against benchmark results: each goal, the figure measured, met or not.

Reads the JSON files that ``heads.py``, ``feature_cache.py`` and ``dag.py`` write (given in any
order; the kind of each is told from its contents) and prints one line per goal. GPU goals are
judged only on results measured on a GPU; CPU results of them show as not measured.

    python benchmarks/goals.py benchmarks/results/heads-h100.json benchmarks/results/feature-cache-h100.json \\
        benchmarks/results/dag-ci-cpu-2core.json [--out goals.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The goals: (key, what, bound, direction); "max": measured <= bound, "min": >= bound.
STEP_TIME = ("coco_step_time_ratio", "frozen/fine-tune step time, Swin-B Mask R-CNN at 1024 (GPU)", 0.45, "max")
PEAK_MEM = ("coco_peak_mem_ratio", "frozen/fine-tune peak memory, Swin-B Mask R-CNN at 1024 (GPU)", 0.40, "max")
FORWARD = ("backbone_fraction_of_peak", "frozen backbone forward, fraction of the bf16 peak (GPU)", 0.40, "min")
CACHE = ("feature_cache_warm_speedup", "evaluation, second pass with the feature cache vs none (GPU)", 3.0, "min")
NOOP = ("noop_snakemake_s", "no-op snakemake on a finished workspace, seconds (CPU)", 5.0, "max")


def kind_of(report: dict) -> str | None:
    if "ratios" in report and "forward" in report:
        return "heads"
    if "results" in report and all("warm_s" in r or "error" in r for r in report["results"]):
        return "feature_cache"
    if "noop_run_s" in report:
        return "dag"
    return None


def on_gpu(report: dict) -> bool:
    return not str(report.get("environment", {}).get("device", "cpu")).startswith("cpu")


def row(goal: tuple, measured: float | None, where: str, note: str = "") -> dict:
    key, what, bound, direction = goal
    met = None if measured is None else (measured <= bound if direction == "max" else measured >= bound)
    return {"goal": key, "what": what, "bound": bound, "direction": direction, "measured": measured,
            "met": met, "source": where, "note": note}


def heads_goals(reports: list[tuple[dict, str]]) -> list[dict]:
    """The step and forward goals over all heads.py results measured on a GPU (one run may be split
    over several files, as gpu.sh does)."""
    where = ", ".join(Path(w).name for _, w in reports)
    gpu = [(r, w) for r, w in reports if on_gpu(r)]
    if not gpu:
        return [row(g, None, where, "measured on a CPU") for g in (STEP_TIME, PEAK_MEM, FORWARD)]
    ratios = [(x, w) for r, w in gpu for x in r["ratios"] if (x["task"], x["size"]) == ("coco", "paper")]
    rows = []
    if not ratios:
        rows += [row(STEP_TIME, None, where, "no paper-size COCO pair"), row(PEAK_MEM, None, where, "no paper-size COCO pair")]
    else:
        coco, where = ratios[-1]
        # The frozen backbone may run eager, compiled or with fused attention; the best is the figure.
        options = {"eager": (coco["step_time_ratio"], coco["peak_mem_ratio"])}
        options.update({v: (x["step_time_ratio"], x["peak_mem_ratio"]) for v, x in coco.get("variants", {}).items()})
        for index, goal in ((0, STEP_TIME), (1, PEAK_MEM)):
            best = min(options, key=lambda name: options[name][index])
            others = ", ".join(f"{name} {value[index]:.2f}" for name, value in options.items())
            rows.append(row(goal, options[best][index], where, f"{best} ({others})"))
    forward = [(f, w) for r, w in gpu for f in r["forward"] if f.get("size") == "paper" and f.get("fraction_of_peak")]
    if forward:
        best, where = max(forward, key=lambda item: item[0]["fraction_of_peak"])
        rows.append(row(FORWARD, best["fraction_of_peak"], where,
                        f"{best['batch']} x {best['image']} px, {best.get('variant', 'compile' if best['compiled'] else 'eager')}, "
                        f"{best['achieved_tflops']:.1f} of {best['peak_tflops']} TFLOP/s"))
    else:
        rows.append(row(FORWARD, None, where, "no paper-size forward with a known peak"))
    return rows


def cache_goals(report: dict, where: str) -> list[dict]:
    if not on_gpu(report):
        return [row(CACHE, None, where, "measured on a CPU")]
    rows = [row(CACHE, r["speedup_warm"], where, f"{r['task']}, {r['where']} cache, levels {','.join(r.get('levels', ['all']))}")
            for r in report["results"] if r.get("size") == "paper" and "error" not in r]
    return rows or [row(CACHE, None, where, "no paper-size result")]


def dag_goals(report: dict, where: str) -> list[dict]:
    jobs = sum(report.get("jobs_per_rule", {}).values())
    return [row(NOOP, report["noop_run_s"], where, f"{report['profile']}, {jobs} jobs, from nothing in "
                                                   f"{report['full_run_s']:.0f} s")]


def evaluate(paths: list[Path]) -> list[dict]:
    heads, rows = [], []
    for path in paths:
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"{path}: not a readable benchmark result ({err})")
        kind = kind_of(report)
        if kind is None:
            raise SystemExit(f"{path}: not a result of heads.py, feature_cache.py or dag.py")
        if kind == "heads":
            heads.append((report, str(path)))
        else:
            rows += (cache_goals if kind == "feature_cache" else dag_goals)(report, str(path))
    return (heads_goals(heads) if heads else []) + rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="JSON files of heads.py, feature_cache.py, dag.py")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = evaluate(args.results)
    for r in rows:
        sign = "<=" if r["direction"] == "max" else ">="
        verdict = {True: "met", False: "NOT met", None: "not measured"}[r["met"]]
        figure = f"{r['measured']:.3g}" if r["measured"] is not None else "-"
        print(f"{verdict:12} {figure:>7} (goal {sign} {r['bound']})  {r['what']}  [{r['note']}; {Path(r['source']).name}]")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
