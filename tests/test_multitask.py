"""The shared frozen base network: one backbone pass feeds all three heads, with their own outputs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_HEAD

from frozenrep.backbones import build_backbone
from frozenrep.config import config_from
from frozenrep.heads.ade20k import Mask2FormerSegmenter, SegmentationHeadConfig
from frozenrep.heads.coco import DetectionHeadConfig, build_mask_rcnn
from frozenrep.heads.k400 import VideoClassifier, VideoHeadConfig
from frozenrep.multitask import MultiTaskError, SharedBackbone, adapter_of

FRAMES = 4


@pytest.fixture(params=["tiny-swin-none", "tiny-vit-none"])
def shared(request, registry):
    """Three randomly initialised heads on one frozen tiny body: a Swin, and a plain ViT whose heads
    each put their own simple feature pyramid on the shared map."""
    entry = registry[request.param]
    torch.manual_seed(0)
    body = build_backbone(entry, None, mode="frozen").body
    mean, std = entry.input_mean, entry.input_std
    heads = {
        "coco": build_mask_rcnn(adapter_of(body), 4, config_from(DetectionHeadConfig, TINY_HEAD, "coco.head"), mean, std),
        "ade20k": Mask2FormerSegmenter(adapter_of(body), 5, config_from(SegmentationHeadConfig, dict(
            hidden_dim=32, num_queries=8, num_heads=4, feedforward_dim=64), "ade20k.head"), mean, std),
        "k400": VideoClassifier(adapter_of(body), 3, config_from(VideoHeadConfig, dict(
            num_frames=FRAMES, depth=1, width=16, num_heads=2, level=1, spatial_pool=2), "k400.head"), mean, std),
    }
    for head in heads.values():
        head.eval()
    return SharedBackbone(body, heads, entry)


def count_forwards(module):
    calls = []
    return calls, module.register_forward_hook(lambda *_: calls.append(1))


def test_one_backbone_pass_gives_each_heads_own_predictions(shared):
    frames = torch.rand(FRAMES, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    calls, hook = count_forwards(shared.body)
    prediction = shared.predict(frames)
    assert len(calls) == 1 and shared.body_passes == 1

    with torch.no_grad():  # each head alone, through its own preprocessing: three more body passes
        detections = shared.heads["coco"](list(frames))
        classes = shared.heads["ade20k"].scores(frames).argmax(1)
        probabilities = shared.heads["k400"](frames.permute(1, 0, 2, 3)[None]).softmax(-1)[0]
    hook.remove()
    assert len(calls) == 4

    assert len(prediction["coco"]) == FRAMES
    assert sum(len(d["boxes"]) for d in detections) > 0  # random heads still propose boxes to compare
    for shared_frame, own in zip(prediction["coco"], detections):
        assert shared_frame.keys() == own.keys()
        for key in own:
            torch.testing.assert_close(shared_frame[key], own[key], rtol=1e-6, atol=1e-6)
    assert torch.equal(prediction["ade20k"], classes)
    assert prediction["ade20k"].shape == (FRAMES, 64, 64)
    torch.testing.assert_close(prediction["k400"], probabilities, rtol=1e-6, atol=1e-7)


def test_bad_inputs_and_foreign_heads_are_refused(shared, tiny_entry):
    with pytest.raises(MultiTaskError, match="multiples of the backbone's coarsest stride 32"):
        shared.predict(torch.rand(FRAMES, 3, 64, 72))
    with pytest.raises(ValueError, match="built for 4 .*num_frames"):
        shared.predict(torch.rand(FRAMES + 1, 3, 64, 64))
    with pytest.raises(MultiTaskError, match=r"\(T, 3, H, W\)"):
        shared.predict(torch.rand(3, 64, 64))
    assert shared.body_passes == 0  # refused before the backbone ran
    other = build_backbone(tiny_entry, None, mode="frozen").body
    with pytest.raises(MultiTaskError, match="coco head is not built on the shared body"):
        SharedBackbone(other, {"coco": shared.heads["coco"]}, tiny_entry)


def run_cli(ws, *args):
    return subprocess.run([str(Path(sys.executable).parent / "frozenrep-predict-video"), *args], cwd=ws,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.workflow
def test_cli_runs_the_workflows_frozen_heads_on_a_video(ci_run, tmp_path):
    ws, result = ci_run
    assert result.returncode == 0, result.stderr[-3000:]
    video = sorted((ws / "data" / "k400" / "videos" / "val").rglob("*.mp4"))[0]
    done = run_cli(ws, "--configfile", "params/ci.yaml", "--backbone", "tiny-swin-none", str(video),
                   "--out", str(tmp_path / "prediction.json"), "--score-threshold", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "prediction.json").read_text())
    config = yaml.safe_load((ws / "params" / "ci.yaml").read_text())
    frames = config["k400"]["head"]["num_frames"]
    assert summary["backbone_passes"] == 1 and summary["frames"] == frames
    assert len(summary["detections"]) == frames
    assert sum(summary["segmentation_shares"].values()) == pytest.approx(1.0, abs=1e-3)
    classes = (ws / "data" / "k400" / "annotations" / "val.csv").read_text()
    assert summary["video_top5"] and all(entry["class"] in classes for entry in summary["video_top5"])
    assert sum(entry["probability"] for entry in summary["video_top5"]) == pytest.approx(1.0, abs=1e-3)

    # a head trained under other settings than the profile's is refused, not silently used
    changed = dict(config, coco={**config["coco"], "train": {**config["coco"]["train"], "lr": 0.5}})
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    stale = run_cli(ws, "--configfile", str(tmp_path / "changed.yaml"), "--backbone", "tiny-swin-none", str(video))
    assert stale.returncode == 1
    assert "runs/coco/tiny-swin-none/frozen/seed0/head.safetensors was trained with other settings" in stale.stderr
    missing = run_cli(ws, "--configfile", "params/ci.yaml", "--backbone", "tiny-swin-none", "--seed", "7", str(video))
    assert missing.returncode == 1 and "no frozen coco head" in missing.stderr and "snakemake" in missing.stderr
