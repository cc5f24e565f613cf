"""Mask R-CNN on the adapter, and COCO AP computed from predictions by pycocotools."""

import pytest
import torch
from workspace import ground_truth_outputs

from frozenrep.config import config_from
from frozenrep.data.coco import CocoDetection
from frozenrep.evaluation.coco import coco_ap, evaluate_detection, predictions_to_coco
from frozenrep.heads.coco import DetectionHeadConfig, build_mask_rcnn


ENGINE_LOSSES = {"torchvision": {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"},
                 "detectron2": {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}}


@pytest.mark.parametrize("engine", ["torchvision", "detectron2"])
def test_training_forward_with_and_without_objects(tiny_detector, engine):
    model = tiny_detector("frozen", engine=engine).train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 30.0, 28.0]]), "labels": torch.tensor([2]),
         "masks": torch.zeros(1, 64, 64, dtype=torch.uint8).index_fill_(1, torch.arange(4, 28), 1)},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
         "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)},  # an image with no objects
    ]
    losses = model(images, targets)
    assert set(losses) == ENGINE_LOSSES[engine]
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_sampler_counts_stay_on_the_device_until_asked():
    """The samplers record what the losses are averaged over without reading it back: each read is
    a host-device wait on a GPU, and only data-parallel training needs the counts."""
    from conftest import DispatchedOps
    from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

    from frozenrep.heads.coco import PerSampleSampler
    from frozenrep.randomness import batch_seeds

    sampler = PerSampleSampler(BalancedPositiveNegativeSampler(8, 0.25), stream=1)
    matched = [torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, -1, 2]), torch.tensor([0, 0, 0, 0, 3])]
    for seeds in (None, (11, 12)):
        with batch_seeds(seeds) if seeds else torch.no_grad(), DispatchedOps() as reads:
            positives, negatives = sampler(matched)
        assert "aten::_local_scalar_dense" not in reads.names
        pos, total = sampler.counts
        # image 0: 2 of its 4 positives (a quarter of 8), 6 negatives; image 1: its one positive, 4 negatives
        assert (int(pos), int(total)) == (3, 3 + 6 + 4)
        assert int(pos) == sum(int(p.sum()) for p in positives)


@pytest.mark.parametrize("engine", ["torchvision", "detectron2"])
def test_inference_returns_masks_at_image_size(tiny_detector, engine):
    model = tiny_detector("frozen", engine=engine).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64), torch.rand(3, 64, 48)])
    assert out[1]["masks"].shape[1:] == (1, 64, 48)
    assert out[0]["boxes"].shape[1] == 4 and len(out[0]["scores"]) == len(out[0]["labels"])


def test_anchor_levels_must_match_the_backbone(tiny_entry):
    from frozenrep.backbones import build_backbone

    head = config_from(DetectionHeadConfig, dict(fpn_channels=16, anchor_sizes=((8,), (16,))), "coco.head")
    with pytest.raises(ValueError, match="anchor_sizes has 2 levels, but the FPN on this backbone has 5"):
        build_mask_rcnn(build_backbone(tiny_entry, None), 4, head, tiny_entry.input_mean, tiny_entry.input_std)


def test_roi_sampling_ratio_reaches_both_roi_poolers(tiny_entry):
    from conftest import TINY_HEAD

    from frozenrep.backbones import build_backbone

    for ratio in (1, 2):
        model = build_mask_rcnn(build_backbone(tiny_entry, None), 4,
                                config_from(DetectionHeadConfig, {**TINY_HEAD, "roi_sampling_ratio": ratio}, "coco.head"),
                                tiny_entry.input_mean, tiny_entry.input_std)
        assert model.roi_heads.box_roi_pool.sampling_ratio == model.roi_heads.mask_roi_pool.sampling_ratio == ratio


def test_fpn_repeats_stack_pyramids_and_add_the_pool_level_once(tiny_entry):
    from conftest import TINY_HEAD

    from frozenrep.backbones import build_backbone

    def neck(repeats):
        torch.manual_seed(0)
        model = build_mask_rcnn(build_backbone(tiny_entry, None), 4,
                                config_from(DetectionHeadConfig, {**TINY_HEAD, "fpn_repeats": repeats}, "coco.head"),
                                tiny_entry.input_mean, tiny_entry.input_std)
        return model.backbone

    one, three = neck(1), neck(3)
    size = lambda m: sum(p.numel() for p in m.fpn.parameters()) + sum(p.numel() for p in m.repeats.parameters())
    # each repeat is a torchvision FPN on 16-channel levels: 4 x (1x1 + 3x3 convolutions)
    assert size(three) - size(one) == 2 * 4 * (16 * 16 + 16 + 16 * 16 * 9 + 16)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = one(images), three(images)
    assert list(a) == list(b) and list(a)[-1] == "pool"  # the max-pool level once, after the last FPN
    assert [t.shape for t in a.values()] == [t.shape for t in b.values()] and len(a) == one.num_levels
    assert not torch.allclose(a[list(a)[0]], b[list(b)[0]])
    with pytest.raises(ValueError, match="fpn_repeats must be at least 1"):
        neck(0)


def test_coco_ap_of_perfect_shifted_and_empty_predictions(remapped_coco):
    ds = CocoDetection(remapped_coco, "val")
    assert ds.cat_ids == [5, 17, 90] and ds.num_classes == 4
    perfect = predictions_to_coco(ground_truth_outputs(ds), ds.ids, ds)
    assert {r["category_id"] for r in perfect} <= {5, 17, 90}
    metrics = coco_ap(ds, perfect)
    assert metrics["box_ap"] == pytest.approx(100.0) and metrics["mask_ap"] == pytest.approx(100.0, abs=0.5)
    shifted = coco_ap(ds, predictions_to_coco(ground_truth_outputs(ds, shift=0.3), ds.ids, ds))
    assert 0.0 < shifted["box_ap"] < 90.0 and shifted["box_ap50"] > shifted["box_ap75"]
    assert shifted["mask_ap"] < metrics["mask_ap"]
    wrong_class = [dict(r, category_id=5 if r["category_id"] != 5 else 17) for r in perfect]
    assert coco_ap(ds, wrong_class)["box_ap"] < 50.0
    # COCOeval's -1 for a size range without ground truth (no object of these 64-px images is
    # "large", over 96 x 96 px) is recorded as None, for perfect and for no detections alike
    assert metrics["box_ap_large"] is None and metrics["mask_ap_large"] is None
    empty = coco_ap(ds, [])
    assert empty["box_ap"] == 0.0 and empty["mask_ap"] == 0.0 and empty["box_ap50"] == 0.0
    assert empty["box_ap_large"] is None and empty["mask_ap_large"] is None


def test_evaluate_detection_runs_the_model(tiny_detector, tiny_coco):
    ds = CocoDetection(tiny_coco, "val")
    metrics, results = evaluate_detection(tiny_detector("frozen"), ds, batch_size=3)
    assert {"box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 100.0 for k in ("box_ap", "mask_ap"))
    assert all({"image_id", "category_id", "bbox", "score", "segmentation"} <= set(r) for r in results)
