"""The benchmark scripts run and report what their README quotes (smallest settings; no timing asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

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
    assert [(r["task"], r["size"]) for r in report["ratios"]] == [("k400", "default")]
    forward = report["forward"][0]
    assert forward["gflops_per_image"] > 0 and forward["fraction_of_peak"] is None  # a CPU has no listed peak
    assert "frozen/fine-tune default  k400" in done.stdout


def test_heads_benchmark_times_both_detection_engines_side_by_side(tmp_path):
    out = tmp_path / "engines.json"
    done = run("heads.py", "--sizes", "default", "--tasks", "coco", "--engines", "torchvision", "detectron2",
               "--no-forward", "--steps", "1", "--warmup", "0", "--threads", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(r["engine"], r["mode"]) for r in report["steps"]] == [
        ("torchvision", "frozen"), ("torchvision", "finetune"), ("detectron2", "frozen"), ("detectron2", "finetune")]
    assert [r["mode"] for r in report["engines"]] == ["frozen", "finetune"]
    assert all(r["step_time_ratio"] > 0 for r in report["engines"])
    assert "torchvision/detectron2 default  frozen" in done.stdout


def test_feature_cache_benchmark_hits_every_sample_on_the_warm_pass(tmp_path):
    out = tmp_path / "cache.json"
    done = run("feature_cache.py", "--sizes", "default", "--tasks", "k400", "--where", "disk", "--samples", "8",
               "--root", str(tmp_path), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads(out.read_text())["results"]
    frames = result["samples"] * 8  # 8 frames per clip in the default profile, each its own entry
    assert (result["hits"], result["misses"]) == (frames, frames)
    assert result["disk_mb"] > 0


def test_host_sync_count_finds_torchvisions_waits_and_none_of_frozenreps_samplers(tmp_path):
    out = tmp_path / "syncs.json"
    done = run("host_syncs.py", "--sizes", "default", "--tasks", "coco", "--modes", "frozen", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    (step,) = json.loads(out.read_text())["steps"]
    sites = step["waits_by_site"]
    assert step["waits"] == sum(sites.values()) == sum(step["waits_by_part"].values()) > 0
    assert step["operators"] == sum(step["operators_by_part"].values()) > step["waits"]
    assert any("torchvision/ops/boxes.py" in s and s.endswith(": nms") for s in sites)  # the RPN's NMS
    assert any(s.startswith("frozenrep/training.py") for s in sites)  # the finite-loss check
    assert not any("frozenrep/heads/coco.py" in s for s in sites)  # the samplers' counts stay on the device
    # AdamW's step counts are read on the host, a GPU run's too: reported, not counted as waits
    assert any(s.startswith("torch/optim/") for s in step["host_only_reads"])
    assert step["operators_by_part"]["backward"] > 0 and step["operators_by_part"]["optimizer"] > 0


def test_data_loading_benchmark_times_decoding_apart_and_counts_the_workers_a_step_needs(tmp_path):
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
    assert need["rate"] == frozen["items_per_s"] and need["workers_needed"] >= 1
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
    assert "three heads separately" in done.stdout


def write(path: Path, report: dict) -> Path:
    path.write_text(json.dumps(report))
    return path


def test_goals_judge_gpu_results_and_leave_cpu_results_unjudged(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import goals

    gpu = {"device": "NVIDIA H200"}
    steps = write(tmp_path / "heads-h200.json", {"environment": gpu, "forward": [
        {"size": "paper", "batch": 256, "image": 224, "variant": "eager", "compiled": False, "fraction_of_peak": 0.2,
         "achieved_tflops": 198.0, "peak_tflops": 989.4},
        {"size": "paper", "batch": 256, "image": 224, "variant": "compile+fused", "compiled": True,
         "fraction_of_peak": 0.42, "achieved_tflops": 415.5, "peak_tflops": 989.4}],
        "ratios": [{"task": "coco", "size": "paper", "step_time_ratio": 0.6, "peak_mem_ratio": 0.5,
                    "variants": {"eager": {"step_time_ratio": 0.6, "peak_mem_ratio": 0.5},
                                 "fused": {"step_time_ratio": 0.44, "peak_mem_ratio": 0.55}}}]})
    rest = write(tmp_path / "heads-rest-h200.json", {"environment": gpu, "forward": [], "ratios": [
        {"task": "k400", "size": "paper", "step_time_ratio": 0.3, "peak_mem_ratio": 0.1}]})
    cache = write(tmp_path / "feature-cache-h200.json", {"environment": gpu, "results": [
        {"task": "k400", "size": "paper", "where": "disk", "speedup_warm": 3.5, "warm_s": 0.1},
        {"task": "coco", "size": "paper", "where": "disk", "speedup_warm": 1.9, "warm_s": 0.4},
        {"task": "coco", "size": "default", "where": "disk", "speedup_warm": 9.0, "warm_s": 0.1}]})
    dag = write(tmp_path / "dag.json", {"profile": "params/default.yaml", "noop_run_s": 5.4, "full_run_s": 900.0,
                                        "jobs_per_rule": {"heads": 4}})
    cpu = write(tmp_path / "heads-cpu.json", {"environment": {"device": "cpu (2 cores)"}, "forward": [], "ratios": [
        {"task": "coco", "size": "paper", "step_time_ratio": 0.1, "peak_mem_ratio": 0.1}]})

    rows = {(r["goal"], r["note"].split(",")[0]): r for r in goals.evaluate([steps, rest, cache, dag])}
    step = rows[("coco_step_time_ratio", "fused (eager 0.60")]
    assert (step["measured"], step["met"]) == (0.44, True)  # the best of the backbone's variants
    peak = rows[("coco_peak_mem_ratio", "eager (eager 0.50")]
    assert (peak["measured"], peak["met"]) == (0.5, False)
    forward = rows[("backbone_fraction_of_peak", "256 x 224 px")]
    assert "compile+fused" in forward["note"]
    assert (forward["measured"], forward["met"]) == (0.42, True)
    assert rows[("feature_cache_warm_speedup", "k400")]["met"] is True
    assert rows[("feature_cache_warm_speedup", "coco")]["met"] is False  # the default-size row is not a goal
    assert len([r for r in rows if r[0] == "feature_cache_warm_speedup"]) == 2
    assert rows[("noop_snakemake_s", "params/default.yaml")]["met"] is False
    assert "4 jobs" in rows[("noop_snakemake_s", "params/default.yaml")]["note"]

    unjudged = goals.evaluate([cpu])
    assert [r["goal"] for r in unjudged] == ["coco_step_time_ratio", "coco_peak_mem_ratio", "backbone_fraction_of_peak"]
    assert all(r["met"] is None and r["note"] == "measured on a CPU" for r in unjudged)

    done = run("goals.py", str(steps), str(tmp_path / "nothing.json"))
    assert done.returncode != 0 and "nothing.json" in done.stderr


def gpu_sh(out: Path, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(out)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHON": sys.executable, **env})


def test_gpu_run_refuses_a_machine_without_cuda(tmp_path):
    done = gpu_sh(tmp_path / "out", CUDA_VISIBLE_DEVICES="")  # no GPU visible, on any machine
    assert done.returncode != 0 and "CUDA is not available" in done.stderr
    assert not list((tmp_path / "out").glob("*.json"))


def test_gpu_run_stages_that_run_out_of_time_are_reported_and_the_next_ones_still_run(tmp_path):
    limits = {"COCO_S": "1", "ENGINES_S": "1", "FORWARD_S": "1", "CACHE_S": "1", "HEADS_S": "1", "MULTITASK_S": "1"}
    done = gpu_sh(tmp_path, FROZENREP_BENCH_DEVICE="cpu", FROZENREP_BENCH_SIZES="default", **limits)
    assert done.returncode != 0 and "no stage wrote a result" in done.stdout + done.stderr
    ended = [line for line in done.stdout.splitlines() if " ended with status " in line]
    assert [line.split(" ended")[0] for line in ended] == [
        "gpu.sh: COCO steps", "gpu.sh: detection engines", "gpu.sh: backbone forward", "gpu.sh: feature cache",
        "gpu.sh: ADE20K and K400 steps", "gpu.sh: shared multi-task pass"]
    assert all("status 124" in line for line in ended)  # timeout's status: cut at the limit
    assert (tmp_path / "gpu-cpu-smoke.log").read_text().count(" ended with status 124") == 6
