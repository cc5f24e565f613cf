"""The Detectron2 engine (``coco.engine: detectron2``): Detectron2's Mask R-CNN and Cascade Mask
R-CNN, built from its own model-zoo configs, behind the interface of the torchvision engine.

The guarantees both engines share (frozen backbone bit-identical, resume bit for bit) are the
torchvision engine's tests, run on both (test_backbone.py, test_training.py, test_distributed.py).
"""

import json

import pytest
import torch
from conftest import TINY_HEAD
from workspace import ground_truth_outputs, in_this_process, job_spec, metrics_of

from frozenrep.data.coco import CocoDetection, collate
from frozenrep.evaluation.coco import coco_ap, predictions_to_coco
from frozenrep.heads.coco import detection_loss, loss_normalisers
from frozenrep.randomness import batch_seeds

D2 = dict(engine="detectron2")  # the tiny head, 32 channels wide (Detectron2's GroupNorm has 32 groups)


def test_cascade_heads_are_refused_on_torchvision(tiny_detector):
    with pytest.raises(ValueError, match="roi_heads is 'cascade'.*set coco.engine to detectron2"):
        tiny_detector(roi_heads="cascade")


@pytest.mark.parametrize("roi_heads, stages", [("standard", 1), ("cascade", 3)])
def test_the_model_is_detectron2s_zoo_config_with_the_profiles_head_keys(tiny_detector, roi_heads, stages):
    from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads

    model = tiny_detector(**D2, roi_heads=roi_heads, box_head_convs=4, fpn_repeats=2)
    heads = model.model.roi_heads
    assert type(heads) is (CascadeROIHeads if stages == 3 else StandardROIHeads)
    box_heads = list(heads.box_head) if stages == 3 else [heads.box_head]
    assert len(box_heads) == stages
    assert all(len(head.conv_norm_relus) == 4 and len(head.fcs) == 1 for head in box_heads)  # 4conv1fc
    predictors = list(heads.box_predictor) if stages == 3 else [heads.box_predictor]
    assert all(p.cls_score.out_features == 4 for p in predictors)  # 3 classes + background
    # two FPNs stacked, the max-pool level once, every level 32 channels
    assert model.model.backbone.bottom_up.bottom_up.levels is model.levels()
    assert {s.channels for s in model.model.backbone.output_shape().values()} == {32}
    with pytest.raises(ValueError, match="fpn_channels is 16: Detectron2's GroupNorm"):
        tiny_detector(engine="detectron2", fpn_channels=16)
    assert list(model.model.backbone.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]
    assert model.config_name.startswith("Misc/cascade" if stages == 3 else "COCO-InstanceSegmentation/mask_rcnn")


@pytest.mark.parametrize("roi_heads", ["standard", "cascade"])
def test_two_parts_of_a_batch_give_the_whole_batchs_losses(tiny_detector, tiny_coco, roi_heads):
    """What two-process training rests on: each image's anchors and proposals are drawn from its
    own seed, and the parts' losses, weighted by their normalisers, are the whole batch's."""
    # Few proposals, so that an image's sampled proposals are its own count (its ground truth among
    # them); predictors far from their initial weights, so that each image's losses differ.
    model = tiny_detector(**D2, roi_heads=roi_heads, rpn_post_nms_top_n_train=8).train()
    heads = model.model.roi_heads
    for predictor in [heads.mask_head.predictor, *heads.box_predictor.modules()]:
        if isinstance(predictor, torch.nn.Linear | torch.nn.Conv2d):
            torch.nn.init.normal_(predictor.weight, std=0.5)
    images, targets = collate([CocoDetection(tiny_coco, "train", train=True)[i] for i in range(4)])
    seeds = (11, 12, 13, 14)

    def losses(part):
        torch.manual_seed(0)  # the global generator in the same state for every call
        with torch.no_grad(), batch_seeds([seeds[i] for i in part]):
            values = detection_loss(model, ([images[i] for i in part], [targets[i] for i in part]))
        return values, loss_normalisers(model, torch.device("cpu"))

    whole, whole_n = losses([0, 1, 2, 3])
    (a, a_n), (b, b_n) = losses([0]), losses([1, 2, 3])  # unequal parts: their weights are their normalisers
    assert set(whole) == set(whole_n)  # every loss term has its normaliser
    if roi_heads == "cascade":
        assert {"loss_cls_stage2", "loss_box_reg_stage2"} <= set(whole)
    for key in whole:
        assert whole_n[key] == a_n[key] + b_n[key]
        pooled = (a[key] * a_n[key] + b[key] * b_n[key]) / (a_n[key] + b_n[key]).clamp(min=1)
        assert float(whole[key]) == pytest.approx(float(pooled), rel=1e-4, abs=1e-6), key


def test_coco_evaluator_and_frozenrep_agree_on_the_same_predictions(remapped_coco):
    """Ground truth as predictions (AP 100), and shifted ground truth, scored by Detectron2's
    COCOEvaluator and by frozenrep's evaluation: the same AP, for boxes and masks."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, Instances

    from frozenrep.heads.coco_detectron2 import as_torchvision

    ds = CocoDetection(remapped_coco, "val")
    name = f"frozenrep-test-{remapped_coco.parent.name}"
    register_coco_instances(name, {}, str(remapped_coco / "annotations" / "instances_val2017.json"),
                            str(remapped_coco / "val2017"))
    DatasetCatalog.get(name)  # loads the file: its metadata maps COCO's category ids to Detectron2's classes
    for shift in (0.0, 0.3):
        evaluator = COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False, use_fast_impl=False)
        evaluator.reset()
        ours = []
        for image_id, output in zip(ds.ids, ground_truth_outputs(ds, shift)):
            height, width = output["masks"].shape[-2:]
            instances = Instances((height, width), pred_boxes=Boxes(output["boxes"]), scores=output["scores"],
                                  pred_classes=output["labels"] - 1, pred_masks=output["masks"][:, 0] > 0.5)
            evaluator.process([{"image_id": image_id}], [{"instances": instances}])
            ours.append(as_torchvision(instances))  # what the engine hands frozenrep's evaluation
        theirs = evaluator.evaluate()
        metrics = coco_ap(ds, predictions_to_coco(ours, ds.ids, ds))
        if shift == 0.0:
            assert metrics["box_ap"] == pytest.approx(100.0) and metrics["mask_ap"] == pytest.approx(100.0, abs=0.5)
        else:
            assert 0.0 < metrics["box_ap"] < 90.0
        for task, prefix in (("bbox", "box"), ("segm", "mask")):
            for key, suffix in (("AP", ""), ("AP50", "50"), ("AP75", "75")):
                assert metrics[f"{prefix}_ap{suffix}"] == pytest.approx(theirs[task][key], abs=1e-6), (shift, task, key)


def test_a_ci_profile_job_trains_and_evaluates_on_detectron2(job_root, tmp_path):
    from frozenrep.jobs import Evaluation, run_training

    root, entry = job_root
    spec = job_spec(root, entry, "coco", "detectron2", steps=2, checkpoint_every=2)
    torchvision_spec = json.loads(json.dumps(spec))
    spec["task_config"]["engine"] = "detectron2"
    manifest, checkpoint = root / "coco.manifest.json", root / "tiny.safetensors"
    head = tmp_path / "head.safetensors"
    in_this_process(run_training, spec, checkpoint, manifest, head, tmp_path / "curve.csv",
                    evaluation=Evaluation(tmp_path / "metrics.json"))
    from safetensors.torch import load_file

    weights = load_file(str(head))
    assert any(k.startswith("model.roi_heads.") for k in weights)  # Detectron2's RoI heads were trained
    assert not any(".levels.body." in k for k in weights)  # the frozen backbone is not in the head file
    metrics = metrics_of(tmp_path / "metrics.json")
    assert {"box_ap", "mask_ap", "box_ap50"} <= set(metrics) and 0.0 <= metrics["box_ap"] <= 100.0
    from frozenrep.config import JobSpec

    # the engine is part of what a head's fingerprint covers: a torchvision head is never resumed as this one
    fingerprints = {JobSpec.from_json(json.dumps(s)).fingerprint("0" * 64) for s in (spec, torchvision_spec)}
    assert len(fingerprints) == 2


def test_a_plain_vit_trains_through_the_simple_feature_pyramid_on_detectron2(registry, tiny_coco):
    """A plain ViT's one level reaches Detectron2's FPN through the project's one simple feature
    pyramid, which trains with the head while the ViT stays frozen."""
    from frozenrep.backbones import SimpleFeaturePyramid, build_backbone
    from frozenrep.config import config_from
    from frozenrep.heads.coco import DetectionHeadConfig
    from frozenrep.heads.coco_detectron2 import build_detectron2_rcnn

    entry = registry["tiny-vit-none"]
    torch.manual_seed(0)
    head = config_from(DetectionHeadConfig, {**TINY_HEAD, "fpn_channels": 32}, "coco.head")
    model = build_detectron2_rcnn(build_backbone(entry, None, mode="frozen"), 4, head, entry.input_mean,
                                  entry.input_std).train()
    assert isinstance(model.levels(), SimpleFeaturePyramid)
    images, targets = collate([CocoDetection(tiny_coco, "train", train=True)[i] for i in range(2)])
    sum(detection_loss(model, (images, targets)).values()).backward()
    vit = {id(p) for p in model.levels().adapter.parameters()}
    pyramid = [p for p in model.levels().parameters() if id(p) not in vit]
    assert pyramid and all(p.requires_grad and p.grad is not None for p in pyramid)
    assert all(p.grad is None for p in model.levels().adapter.parameters())  # the ViT is frozen
