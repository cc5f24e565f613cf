"""ADE20K: the on-disk format, the label conventions, bad input, Mask2Former on the adapter, mIoU."""

import hashlib
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from frozenrep.config import config_from
from frozenrep.data import ade20k
from frozenrep.data.ade20k import IGNORE_INDEX, ADE20KSegmentation, mask_path
from frozenrep.evaluation.ade20k import confusion_matrix, metrics_from_confusion
from frozenrep.synthetic import ade20k as synthetic_ade20k


def gen(root, seed=0, num_classes=4):
    synthetic_ade20k.generate(root, num_train=6, num_val=4, image_size=64, num_classes=num_classes, max_regions=3, seed=seed)
    return root


@pytest.fixture(scope="module")
def tiny_ade(tmp_path_factory):
    return gen(tmp_path_factory.mktemp("ade") / "ade20k")


def test_generated_layout_and_determinism(tmp_path, tiny_ade):
    summary = ade20k.verify_layout(tiny_ade)
    assert summary["splits"] == {"train": {"images": 6, "annotations": 6}, "val": {"images": 4, "annotations": 4}}
    assert summary["classes"] == ["h-stripes", "v-stripes", "diagonal", "checker"]
    assert (tiny_ade / "images/training/ADE_train_00000001.jpg").is_file()
    assert (tiny_ade / "annotations/validation/ADE_val_00000004.png").is_file()
    again = gen(tmp_path / "again")
    for path in sorted(tiny_ade.rglob("*.png")):
        assert path.read_bytes() == (again / path.relative_to(tiny_ade)).read_bytes()


def test_label_conventions(tiny_ade):
    ds = ADE20KSegmentation(tiny_ade, "val")
    raw = np.array(Image.open(mask_path(tiny_ade, "val", ds.stems[0])))
    image, labels = ds[0]
    assert image.shape == (3, 64, 64) and labels.shape == (64, 64) and labels.dtype == torch.int64
    assert torch.equal(labels == IGNORE_INDEX, torch.from_numpy(raw == 0))  # 0 "other" is ignored
    shifted = torch.from_numpy(raw.astype(np.int64) - 1)
    assert torch.equal(labels[raw > 0], shifted[raw > 0])  # k -> k-1
    assert ds.num_classes == 4 and int(labels[labels != IGNORE_INDEX].max()) < 4


def test_real_objectinfo_format_is_read(tmp_path):
    (tmp_path / "objectInfo150.txt").write_text(
        "Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n2\t0.1072\t6046\t612\tbuilding, edifice\n")
    assert ade20k.read_class_names(tmp_path) == ["wall", "building, edifice"]


def test_training_augmentation_crops_pads_with_ignore_and_is_seeded(tiny_ade):
    ds = ADE20KSegmentation(tiny_ade, "train", train=True, crop_size=48, scale=(64, 256), ratio_range=(0.5, 2.0))
    shapes = set()
    for seed in range(6):
        image, labels = ds[(0, seed)]
        shapes.add(tuple(image.shape))
        assert labels.shape == (48, 48)
    assert shapes == {(3, 48, 48)}
    a, b = ds[(1, 7)], ds[(1, 7)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    small = ADE20KSegmentation(tiny_ade, "train", train=True, crop_size=64, scale=(16, 16), ratio_range=(1.0, 1.0))
    image, labels = small[(0, 0)]  # resized to 16 px, padded up to the 64-px crop
    assert (labels == IGNORE_INDEX).float().mean() > 0.9 and image[:, 40:, 40:].abs().sum() == 0


def independent_miou(preds, targets, num_classes, ignore=IGNORE_INDEX):
    """IoU per class from boolean masks over all pixels at once (no confusion matrix)."""
    pred = np.concatenate([p.ravel() for p in preds])
    gt = np.concatenate([t.ravel() for t in targets])
    keep = gt != ignore
    pred, gt = pred[keep], gt[keep]
    ious = []
    for c in range(num_classes):
        inter = np.sum((pred == c) & (gt == c))
        union = np.sum((pred == c) | (gt == c))
        ious.append(np.nan if union == 0 else inter / union)
    return 100 * np.nanmean(ious), ious, 100 * np.mean(pred == gt)


def test_miou_matches_independent_computation():
    rng = np.random.default_rng(0)
    num_classes = 7
    preds, targets = [], []
    for size in ((20, 30), (45, 12), (8, 8)):
        gt = rng.integers(0, 5, size)          # classes 5 and 6 never in the ground truth
        gt[rng.random(size) < 0.2] = IGNORE_INDEX
        pred = np.where(rng.random(size) < 0.6, gt, rng.integers(0, 6, size))  # 5 is predicted, 6 never
        pred[pred == IGNORE_INDEX] = 0
        preds.append(pred), targets.append(gt)
    conf = sum(confusion_matrix(torch.from_numpy(p), torch.from_numpy(t), num_classes) for p, t in zip(preds, targets))
    metrics = metrics_from_confusion(conf)
    miou, ious, acc = independent_miou(preds, targets, num_classes)
    assert metrics["miou"] == pytest.approx(miou) and metrics["pixel_acc"] == pytest.approx(acc)
    assert metrics["per_class_iou"][5] == 0.0 and metrics["per_class_iou"][6] is None
    per_image = np.mean([independent_miou([p], [t], num_classes)[0] for p, t in zip(preds, targets)])
    assert metrics["miou"] != pytest.approx(per_image)  # accumulated, not averaged per image


def test_perfect_prediction_scores_100():
    gt = torch.tensor([[0, 1, 255], [2, 2, 1]])
    metrics = metrics_from_confusion(confusion_matrix(gt.clamp(max=2), gt, 3))
    assert metrics["miou"] == pytest.approx(100.0) and metrics["pixel_acc"] == pytest.approx(100.0)


def test_mask_targets_are_each_images_classes_read_back_once():
    from conftest import DispatchedOps

    from frozenrep.heads.ade20k import mask_targets

    labels = torch.randint(0, 6, (3, 16, 16), generator=torch.Generator().manual_seed(0))
    labels[0, :4] = IGNORE_INDEX
    labels[1] = 5                     # one class only
    labels[2] = IGNORE_INDEX          # nothing to learn from
    with DispatchedOps() as ops:
        masks, classes = mask_targets(labels)
    assert ops.names.count("aten::_unique2") == 1  # one read for the batch, not one per image
    for label, mask, cls in zip(labels, masks, classes):
        present = sorted(set(label.unique().tolist()) - {IGNORE_INDEX})
        assert cls.tolist() == present and cls.dtype == torch.long
        assert mask.shape == (len(present), 16, 16) and mask.dtype == torch.float
        assert all(torch.equal(m.bool(), label == c) for m, c in zip(mask, present))
    assert classes[1].tolist() == [5] and classes[2].numel() == 0


@pytest.fixture
def tiny_segmenter(tiny_entry):
    from frozenrep.backbones import build_backbone
    from frozenrep.heads.ade20k import Mask2FormerSegmenter, SegmentationHeadConfig

    def make(mode="frozen", num_classes=4, **head):
        torch.manual_seed(0)
        cfg = config_from(SegmentationHeadConfig, {**dict(hidden_dim=32, num_queries=8, num_heads=4, feedforward_dim=64,
                                               train_num_points=256), **head}, "ade20k.head")
        return Mask2FormerSegmenter(build_backbone(tiny_entry, None, mode=mode), num_classes, cfg,
                                    tiny_entry.input_mean, tiny_entry.input_std)

    return make


def test_mask2former_uses_the_paper_depths_and_the_adapter(tiny_segmenter):
    model = tiny_segmenter(pixel_decoder_layers=1, transformer_decoder_layers=4)
    assert model.config.encoder_layers == 1 and model.config.decoder_layers == 4 + 1  # + the query-only stage
    assert len(model.model.model.pixel_level_module.decoder.encoder.layers) == 1
    assert len(model.model.model.transformer_module.decoder.layers) == 4
    assert model.model.model.pixel_level_module.encoder.adapter is model.backbone
    labels = torch.randint(0, 4, (2, 64, 64))
    labels[1] = IGNORE_INDEX  # an image with nothing labelled
    loss = model.loss(torch.rand(2, 3, 64, 64), labels)["loss_mask2former"]
    assert torch.isfinite(loss)


def test_frozen_guarantee_for_the_segmentation_head(tiny_segmenter, tiny_ade, tmp_path):
    from frozenrep.data.ade20k import collate
    from frozenrep.heads.ade20k import segmentation_loss
    from frozenrep.training import TrainConfig, train

    model = tiny_segmenter("frozen")
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.model.model.transformer_module.state_dict().items()}
    ds = ADE20KSegmentation(tiny_ade, "train", train=True, crop_size=64, scale=(64, 128))
    train(model, ds, collate, segmentation_loss, config_from(TrainConfig, dict(steps=2, batch_size=2, lr=1e-2), "$defs.train"), tmp_path,
          seed=0, fingerprint="s")
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(v, model.model.model.transformer_module.state_dict()[k]) for k, v in head_before.items())
    assert not model.backbone.training


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_prediction_is_at_the_original_size(tiny_segmenter, mode):
    from frozenrep.heads.ade20k import predict

    model = tiny_segmenter().eval()
    pred = predict(model, torch.rand(3, 50, 90), short_side=64, crop_size=48, mode=mode)
    assert pred.shape == (50, 90) and pred.dtype == torch.int64 and int(pred.max()) < 4


def test_download_of_the_official_zip_layout(tmp_path, tiny_ade, http_server):
    archive = tmp_path / "ADEChallengeData2016.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(tiny_ade.rglob("*")):
            if path.is_file():
                zf.write(path, f"ADEChallengeData2016/{path.relative_to(tiny_ade)}")
    body = archive.read_bytes()
    url = http_server.add("/ADEChallengeData2016.zip", body, cut_after=len(body) // 3, cut_times=1)
    root = tmp_path / "data" / "ade20k"
    ade20k.download(root, {"files": [{"url": url, "md5": hashlib.md5(body).hexdigest()}], "downloads": tmp_path / "dl"},
                    backoff=0.01)
    assert ade20k.verify_layout(root)["splits"]["val"]["images"] == 4
    assert not (tmp_path / "data" / "ade20k.tmp").exists()


def test_segmentation_metrics_of_a_hand_computed_confusion_matrix():
    """Six counted pixels and one ignored; class 3 is in neither map, so its IoU is undefined."""
    target = torch.tensor([0, 0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 1])
    conf = confusion_matrix(pred, target, 4)
    assert conf.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    metrics = metrics_from_confusion(conf)
    # IoU: 2 / (3 + 2 - 2), 1 / (2 + 2 - 1), 1 / (1 + 2 - 1); class accuracy: 2/3, 1/2, 1/1
    assert metrics["per_class_iou"] == [pytest.approx(66.6667), pytest.approx(33.3333), 50.0, None]
    assert metrics["miou"] == pytest.approx(50.0)
    assert metrics["pixel_acc"] == pytest.approx(400 / 6)
    assert metrics["mean_acc"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 1) / 3)
