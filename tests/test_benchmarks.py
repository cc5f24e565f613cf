"""The benchmark scripts run and report what their README quotes (smallest settings; no timing asserted)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True,
                          text=True, timeout=600)


def test_heads_benchmark_reports_frozen_and_finetune_side_by_side(tmp_path):
    out = tmp_path / "heads.json"
    done = run("heads.py", "--sizes", "default", "--tasks", "k400", "--steps", "2", "--warmup", "1",
               "--threads", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["environment"]["torch"] and report["settings"]["steps"] == 2
    frozen, finetune = report["steps"]
    assert (frozen["mode"], finetune["mode"]) == ("frozen", "finetune")
    assert frozen["trainable_params"] < finetune["trainable_params"] == finetune["total_params"]
    assert report["ratios"][0]["step_time_ratio"] == frozen["step_s_median"] / finetune["step_s_median"]
    forward = report["forward"][0]
    assert forward["gflops_per_image"] > 0 and forward["fraction_of_peak"] is None  # a CPU has no listed peak
    assert "frozen/fine-tune default  k400" in done.stdout


def test_feature_cache_benchmark_hits_every_sample_on_the_warm_pass(tmp_path):
    out = tmp_path / "cache.json"
    done = run("feature_cache.py", "--sizes", "default", "--tasks", "k400", "--where", "disk", "--samples", "8",
               "--root", str(tmp_path), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads(out.read_text())["results"]
    frames = result["samples"] * 8  # 8 frames per clip in the default profile, each its own entry
    assert (result["hits"], result["misses"]) == (frames, frames)
    assert result["disk_mb"] > 0
