"""The shared backbone adapter and the frozen guarantee."""

import pytest
import timm
import torch

from frozenrep.backbones import BackboneAdapter, build_backbone, trainable_state_dict
from frozenrep.config import config_from
from frozenrep.data.coco import collate
from frozenrep.heads.coco import detection_loss
from frozenrep.training import TrainConfig, train


def test_adapter_reports_timm_feature_info_and_returns_nchw(tiny_entry):
    backbone = build_backbone(tiny_entry, None, mode="frozen")
    reference = timm.create_model(tiny_entry.arch, features_only=True, **tiny_entry.arch_kwargs)
    assert backbone.channels == reference.feature_info.channels() == [16, 32, 64, 128]
    assert backbone.strides == reference.feature_info.reduction() == [4, 8, 16, 32]
    feats = backbone(torch.randn(2, 3, 96, 64))
    assert list(feats) == backbone.names
    for (name, feat), channels, stride in zip(feats.items(), backbone.channels, backbone.strides):
        assert feat.shape == (2, channels, 96 // stride, 64 // stride), name
    assert backbone.output_shape()["stage3"] == (64, 16)


def test_adapter_works_on_any_timm_features_model():
    features = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
    adapter = BackboneAdapter(features, mode="finetune")
    feats = adapter(torch.randn(1, 3, 64, 64))
    assert adapter.channels == [64, 128, 256, 512]
    assert [f.shape[1] for f in feats.values()] == adapter.channels


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("engine", ["torchvision", "detectron2"])
def test_frozen_backbone_is_bit_identical_after_training(tiny_detector, tiny_coco, tmp_path, engine):
    from frozenrep.data.coco import CocoDetection
    from frozenrep.tasks.coco import head_levels

    model = tiny_detector("frozen", engine=engine)
    backbone = head_levels(model)  # the adapter, wherever the engine keeps it
    prefix = next(name for name, module in model.named_modules() if module is backbone) + "."
    before = snapshot(backbone)
    assert all(not p.requires_grad for p in backbone.parameters())
    train_set = CocoDetection(tiny_coco, "train", train=True)
    cfg = config_from(TrainConfig, dict(steps=3, batch_size=2, lr=1e-2, warmup_steps=0, checkpoint_every=3), "$defs.train")
    optimizers = []
    original = torch.optim.AdamW.__init__

    def spy(self, params, *args, **kwargs):
        original(self, params, *args, **kwargs)
        optimizers.append(self)

    torch.optim.AdamW.__init__ = spy
    try:
        train(model, train_set, collate, detection_loss, cfg, tmp_path / "run", seed=0, fingerprint="t")
    finally:
        torch.optim.AdamW.__init__ = original
    after = snapshot(backbone)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "frozen backbone weights or buffers changed"
    backbone_ids = {id(p) for p in backbone.parameters()}
    optimized = [p for g in optimizers[0].param_groups for p in g["params"]]
    assert optimized and not backbone_ids & {id(p) for p in optimized}
    assert not any(id(p) in backbone_ids for p in optimizers[0].state)  # no optimizer state for it
    model.train()
    assert model.training and not backbone.training and not backbone.body.training  # eval() kept
    saved = torch.load(tmp_path / "run" / "state.pt", weights_only=True)["model"]
    assert not any(k.startswith(prefix) for k in saved)  # frozen weights are not re-saved
    assert set(saved) == set(trainable_state_dict(model))


def test_finetune_mode_trains_the_backbone(tiny_detector, tiny_coco, tmp_path):
    from frozenrep.data.coco import CocoDetection

    model = tiny_detector("finetune")
    before = snapshot(model.backbone.body)
    cfg = config_from(TrainConfig, dict(steps=2, batch_size=2, lr=1e-2, checkpoint_every=10), "$defs.train")
    train(model, CocoDetection(tiny_coco, "train", train=True), collate, detection_loss, cfg, tmp_path / "r",
          seed=0, fingerprint="t")
    after = snapshot(model.backbone.body)
    assert any(not torch.equal(before[k], after[k]) for k in before)
