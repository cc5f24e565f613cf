"""Any timm family on all three heads: hierarchical CNNs and Swin by their stages, plain ViTs through
a simple feature pyramid; frozen and fine-tuned, through the registry's entries."""

import pytest
import torch

from frozenrep.backbones import BackboneError, SimpleFeaturePyramid, build_backbone, feature_levels, head_levels
from frozenrep.check import check_backbone, check_one, generate_data
from frozenrep.checkpoints import CheckpointEntry
from frozenrep.config import job_spec, load_profile
from frozenrep.local_backbones import create_local_backbone
from frozenrep.tasks import TASK_NAMES, get_task

FAMILIES = ["tiny-swin-none", "tiny-convnext-none", "tiny-resnet-none", "tiny-efficientnet-none",
            "tiny-vit-none", "tiny-dinov2-none"]
PLAIN = {"tiny-vit-none", "tiny-dinov2-none"}


@pytest.fixture(scope="module")
def ci_config():
    return load_profile("params/ci.yaml")


@pytest.fixture(scope="module")
def task_data(tmp_path_factory, ci_config):
    root = tmp_path_factory.mktemp("family-data")
    return {task: generate_data(task, ci_config["datasets"][task]["generate"], root / task) for task in TASK_NAMES}


def test_head_levels_are_the_deepest_at_strides_4_to_32_or_a_plain_models_last_block():
    assert head_levels([4, 8, 16, 32]) == [0, 1, 2, 3]                 # Swin, ConvNeXt
    assert head_levels([2, 4, 8, 16, 32]) == [1, 2, 3, 4]              # ResNet, EfficientNet: the stem is left out
    assert head_levels([2, 4, 4, 8, 8, 16, 32]) == [2, 4, 5, 6]        # several stages at one stride: the deepest
    assert head_levels([16] * 12) == [11] and head_levels([14] * 12) == [11]
    with pytest.raises(BackboneError, match=r"resnet18-os16 .*strides \[2, 4, 8, 16, 16\].*none at \[32\]"):
        head_levels([2, 4, 8, 16, 16], "resnet18-os16")


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_gives_the_heads_levels_at_strides_4_to_32(registry, name):
    adapter = build_backbone(registry[name], None, mode="frozen")
    levels = feature_levels(adapter)
    assert isinstance(levels, SimpleFeaturePyramid) == (name in PLAIN)
    assert levels.strides == [4, 8, 16, 32]
    feats = levels(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats.values()] == [(2, c, 64 // s, 96 // s)
                                                        for c, s in zip(levels.channels, levels.strides)]


def test_a_patch_14_vit_sees_the_image_on_the_stride_16_grid(registry):
    adapter = build_backbone(registry["tiny-dinov2-none"], None, mode="frozen")
    assert adapter.patch == 14 and adapter.strides == [16]
    seen = []
    adapter.body.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    (feat,) = adapter(torch.randn(1, 3, 64, 96)).values()
    assert seen == [(1, 3, 56, 84)]                      # 4 x 6 patches of 14 px: the 16-px grid of 64 x 96
    assert feat.shape == (1, 32, 4, 6)                   # class and register tokens dropped


@pytest.mark.parametrize("name", FAMILIES)
def test_each_head_trains_and_evaluates_frozen_and_finetuned_and_the_frozen_backbone_is_untouched(
        registry, ci_config, task_data, tmp_path, name):
    entry = registry[name]
    checkpoint = tmp_path / f"{name}.safetensors"
    create_local_backbone(entry, checkpoint)
    reference = build_backbone(entry, checkpoint, mode="frozen").state_dict()
    for task in TASK_NAMES:
        cfg = job_spec(ci_config, registry, task, name, "frozen", 0).task_config
        for mode in ("frozen", "finetune"):
            result, model = check_one(entry, checkpoint, cfg, task, mode, task_data[task], tmp_path / f"{task}-{mode}")
            assert result.ok, result.line()
            assert set(result.metrics) == set(get_task(task).table_metrics)
            adapters = [m for m in model.modules() if type(m).__name__ == "BackboneAdapter"]
            assert len(adapters) == 1
            after = adapters[0].state_dict()
            same = all(torch.equal(reference[k], after[k]) for k in reference)
            assert same == (mode == "frozen"), f"{task} {mode}: backbone {'changed' if not same else 'unchanged'}"
            if name in PLAIN:  # the pyramid is head: it trains in both modes and is saved with the head
                pyramid = next(m for m in model.modules() if isinstance(m, SimpleFeaturePyramid))
                assert all(p.requires_grad for p in pyramid.scales.parameters())


def test_check_command_reports_what_fails_and_why(registry, ci_config, tmp_path, capsys):
    from frozenrep.cli.check_backbone import main

    assert main(["tiny-vit-none", "--tasks", "k400"]) == 0
    out = capsys.readouterr().out
    assert "random weights" in out and "k400    frozen   ok" in out and "k400    finetune ok" in out
    assert "2 of 2 (task, mode) pairs work." in out

    dilated = CheckpointEntry(name="resnet-os16", source="file:x", format="safetensors", arch="test_resnet",
                              pretraining="none", arch_kwargs={"output_stride": 16})
    results = check_backbone(ci_config, {**registry, "resnet-os16": dilated}, "resnet-os16", tasks=["coco"])
    assert [r.ok for r in results] == [False, False]
    assert all("BackboneError" in r.error and "none at [32]" in r.error for r in results)


def test_a_video_head_on_a_vit_builds_and_runs_only_the_pyramid_level_it_reads(registry):
    from frozenrep.config import config_from
    from frozenrep.heads.k400 import VideoClassifier, VideoHeadConfig

    entry = registry["tiny-vit-none"]
    head = config_from(VideoHeadConfig, dict(num_frames=2, depth=0, width=8, num_heads=2, level=1), "k400.head")
    model = VideoClassifier(build_backbone(entry, None, mode="frozen"), 3, head, entry.input_mean, entry.input_std)
    assert list(model.backbone.scales) == ["stage2"] and model.level == "stage2"   # stride 8 only
    assert model.backbone_levels == ["plain"]                                      # cached: the ViT's map
    assert model(torch.rand(1, 3, 2, 64, 64)).shape == (1, 3)
