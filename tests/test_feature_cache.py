"""The frozen-backbone feature cache: same head outputs with and without it, hits only where the input repeats."""

import pytest
import torch

from frozenrep.backbones import FeatureCache, build_backbone
from frozenrep.data.coco import CocoDetection, collate
from frozenrep.evaluation.coco import evaluate_detection


def outputs(model, images):
    model.eval()
    with torch.no_grad():
        return model(images)


def assert_same_detections(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


@pytest.mark.parametrize("on_disk", [True, False])
def test_cached_passes_give_the_uncached_outputs_bit_for_bit(tiny_detector, tiny_coco, tmp_path, on_disk):
    val = CocoDetection(tiny_coco, "val", train=False)
    images, _ = collate([val[i] for i in range(4)])
    model = tiny_detector("frozen")
    reference = outputs(model, images)

    cache = FeatureCache("c" * 64, tmp_path / "cache" if on_disk else None)
    model.backbone.body.use_cache(cache)
    first = outputs(model, images)
    assert (cache.hits, cache.misses) == (0, 4)
    second = outputs(model, images)
    assert (cache.hits, cache.misses) == (4, 4)
    assert_same_detections(reference, first)
    assert_same_detections(reference, second)
    if on_disk:
        assert len(list((tmp_path / "cache").rglob("*.feat"))) == 4  # one file per image
        # A fresh cache object over the same folder (the next evaluation job) starts with hits.
        fresh = FeatureCache("c" * 64, tmp_path / "cache")
        model.backbone.body.use_cache(fresh)
        assert_same_detections(reference, outputs(model, images))
        assert (fresh.hits, fresh.misses) == (4, 0)


def test_a_batch_of_cached_and_new_samples_is_put_back_in_order(tiny_entry):
    torch.manual_seed(0)
    backbone = build_backbone(tiny_entry, None, mode="frozen")
    x = torch.rand(5, 3, 64, 64)
    reference = backbone(x)
    cache = FeatureCache("n" * 64)
    backbone.use_cache(cache)
    backbone(x[[1, 3]])  # two of the five are known
    mixed = backbone(x)
    assert (cache.hits, cache.misses) == (2, 5)
    for name in backbone.names:  # within float rounding: a batch of 2 and one of 5 round differently on some CPUs
        torch.testing.assert_close(mixed[name], reference[name], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(mixed[name][[1, 3]], reference[name][[3, 1]], atol=1e-3)  # order matters


def test_another_transform_or_checkpoint_is_another_key(tiny_entry, tmp_path):
    x = torch.rand(3, 64, 64)
    cache = FeatureCache("a" * 64, tmp_path)
    assert cache.key(x) != cache.key(x.flip(-1))                   # an augmented input
    assert cache.key(x) != cache.key(x[:, :32])                    # a crop
    assert cache.key(x) != FeatureCache("b" * 64, tmp_path).key(x)  # other weights
    assert cache.key(x) == FeatureCache("a" * 64, tmp_path).key(x.clone())


def test_a_fine_tuned_backbone_refuses_a_cache(tiny_entry):
    backbone = build_backbone(tiny_entry, None, mode="finetune")
    with pytest.raises(ValueError, match="frozen"):
        backbone.use_cache(FeatureCache("a" * 64))


def test_two_jobs_writing_the_same_entry_do_not_fail(tiny_entry, tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone(tiny_entry, None, mode="frozen")
    x = torch.rand(1, 3, 64, 64)
    feats = backbone._features(x)
    one, two = FeatureCache("a" * 64, tmp_path), FeatureCache("a" * 64, tmp_path)
    key = one.key(x[0])
    one._store(key, [f[0] for f in feats])
    two._store(key, [f[0] for f in feats])  # lost the race: keeps the first, raises nothing
    loaded = two._load(key)
    assert all(torch.equal(a, b[0]) for a, b in zip(loaded, feats))
    assert not [p for p in (tmp_path / ("a" * 16) / key[:2]).iterdir() if p.name.startswith(".")]


def test_evaluation_metrics_are_the_same_with_the_cache(tiny_detector, tiny_coco, tmp_path):
    val = CocoDetection(tiny_coco, "val", train=False)
    model = tiny_detector("frozen")
    plain, _ = evaluate_detection(model, val, batch_size=2)
    model.backbone.body.use_cache(FeatureCache("c" * 64, tmp_path))
    evaluate_detection(model, val, batch_size=2)
    cached, _ = evaluate_detection(model, val, batch_size=2)
    assert cached == plain
