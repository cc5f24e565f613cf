"""The whole DAG end to end on this machine, then a no-op rerun on the finished workspace.

Copies the workflow into a fresh folder (``--workspace``, default a temporary one), runs
``snakemake --cores <N> --configfile=<profile> results/table1.csv`` from nothing, then the same
command again (which must report "Nothing to be done"), and prints and saves both wall times
with the per-rule totals from Snakemake's benchmark files.

    python benchmarks/dag.py --profile params/ci.yaml        # minutes
    python benchmarks/dag.py --profile params/default.yaml   # the embedded default (about 15 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def run(ws: Path, cores: str, profile: str) -> tuple[float, subprocess.CompletedProcess]:
    from workspace import snakemake

    start = time.perf_counter()
    result = snakemake(ws, "--cores", cores, f"--configfile={profile}", "results/table1.csv", timeout=6 * 3600)
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    from workspace import make_workspace

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="params/ci.yaml")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--workspace", type=Path, default=None, help="an empty folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    ws = make_workspace(args.workspace or Path(tempfile.mkdtemp(prefix="frozenrep-dag.")))
    print(f"workspace {ws}", flush=True)
    full, result = run(ws, args.cores, args.profile)
    if result.returncode:
        print(result.stderr[-3000:], file=sys.stderr)
        return result.returncode
    noop, again = run(ws, args.cores, args.profile)
    if "Nothing to be done" not in again.stdout + again.stderr:
        print("the second run was not a no-op:\n" + again.stderr[-3000:], file=sys.stderr)
        return 1
    per_rule: dict[str, float] = defaultdict(float)
    jobs: dict[str, int] = defaultdict(int)
    for tsv in (ws / "logs" / "benchmark").rglob("*.tsv"):
        rule = tsv.relative_to(ws / "logs" / "benchmark").parts[0]
        with open(tsv) as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        per_rule[rule] += float(row["s"])
        jobs[rule] += 1
    report = {"profile": args.profile, "cores": args.cores, "cpu_count": os.cpu_count(),
              "full_run_s": round(full, 1), "noop_run_s": round(noop, 2),
              "job_seconds_per_rule": {k: round(v, 1) for k, v in sorted(per_rule.items())},
              "jobs_per_rule": dict(sorted(jobs.items())), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(json.dumps(report, indent=2))
    print(f"\n{args.profile}: whole DAG {full / 60:.1f} min, no-op rerun {noop:.2f} s ({os.cpu_count()} cores)")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from heads import save_report

    save_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
