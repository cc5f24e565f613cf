"""The benchmark scripts run and report what their README quotes (smallest settings; no timing asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_data_loading_benchmark_times_decoding_apart_and_counts_the_workers_a_step_needs(tmp_path):
    import math

    out = tmp_path / "loading.json"
    rates = REPO / "benchmarks/results/heads-h100.json"
    done = run("data_loading.py", "--sizes", "default", "--tasks", "k400", "--samples", "2", "--batches", "1",
               "--workers", "1", "--step-rates", str(rates), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads(out.read_text())["results"]
    assert (row["size"], row["task"]) == ("default", "k400")
    assert 0 < row["decode_ms"] and 0 < row["transform_ms"] and row["sample_ms"] > 0
    assert [r["workers"] for r in row["loader"]] == [0, 1] and all(r["samples_per_s"] > 0 for r in row["loader"])
    frozen = next(s for s in json.loads(rates.read_text())["steps"]
                  if (s["size"], s["task"], s["mode"]) == ("default", "k400", "frozen"))
    need = row["frozen_step_samples_per_s"]
    assert need["rate"] == frozen["items_per_s"]
    assert need["workers_needed"] == math.ceil(frozen["items_per_s"] / row["samples_per_s_per_worker"])
    assert "decode" in done.stdout and "workers of this machine's speed feed it" in done.stdout


def test_multitask_benchmark_runs_the_backbone_once_for_three_heads(tmp_path):
    out = tmp_path / "multitask.json"
    done = run("multitask.py", "--sizes", "default", "--repeats", "1", "--warmup", "0", "--threads", "1",
               "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads(out.read_text())["results"]
    assert row["backbone_passes"] == {"separate": 3, "shared": 1, "backbone": 1}
    assert (row["frames"], row["image"]) == (8, 64)  # the default profile's clip
    assert row["separate_ms"] > 0 and row["shared_ms"] > 0 and row["backbone_ms"] > 0
    assert row["speedup"] == pytest.approx(row["separate_ms"] / row["shared_ms"], abs=0.02)
    assert "three heads separately" in done.stdout
