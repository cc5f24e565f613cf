"""The frozen-backbone feature cache: same head outputs with and without it, hits only where the input repeats."""

import pytest
import torch

from frozenrep.backbones import build_backbone
from frozenrep.config import config_from
from frozenrep.data.coco import CocoDetection, collate
from frozenrep.evaluation.coco import evaluate_detection
from frozenrep.feature_cache import FeatureCache, FingerprintWeights, fingerprints
from frozenrep.heads.k400 import VideoClassifier, VideoHeadConfig
from frozenrep.jobs import attach_feature_cache


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
        # A fresh cache object over the same folder (the next evaluation) starts with hits.
        fresh = FeatureCache("c" * 64, tmp_path / "cache")
        model.backbone.body.use_cache(fresh)
        assert_same_detections(reference, outputs(model, images))
        assert (fresh.hits, fresh.misses) == (4, 0)


@pytest.mark.parametrize("on_disk", [True, False])
def test_a_batch_of_cached_and_new_samples_is_put_back_in_order(tiny_entry, tmp_path, on_disk):
    torch.manual_seed(0)
    backbone = build_backbone(tiny_entry, None, mode="frozen")
    x = torch.rand(5, 3, 64, 64)
    reference = backbone(x)
    cache = FeatureCache("n" * 64, tmp_path if on_disk else None)
    backbone.use_cache(cache)
    backbone(x[[1, 3]])  # two of the five are known
    mixed = backbone(x)
    assert (cache.hits, cache.misses) == (2, 5)
    for name in backbone.names:  # within float rounding: a batch of 2 and one of 5 round differently on some CPUs
        torch.testing.assert_close(mixed[name], reference[name], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(mixed[name][[1, 3]], reference[name][[3, 1]], atol=1e-3)  # order matters


def test_another_transform_or_checkpoint_is_another_key(tmp_path):
    x = torch.rand(3, 64, 64)
    cache = FeatureCache("a" * 64, tmp_path)
    assert cache.key(x) != cache.key(x.flip(-1))                   # an augmented input
    assert cache.key(x) != cache.key(x[:, :32])                    # a crop
    assert cache.key(x) != cache.key(x.bfloat16())                 # another precision
    assert cache.key(x) != FeatureCache("b" * 64, tmp_path).key(x)  # other weights
    assert cache.key(x) != FeatureCache("a" * 64, tmp_path, ["stage4"]).key(x)  # other levels kept
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_bf16 = cache.key(x)
    assert cache.key(x) != in_bf16  # features computed under autocast
    assert cache.key(x) == FeatureCache("a" * 64, tmp_path).key(x.clone())


def signed64(value: int) -> int:
    value %= 2 ** 64
    return value - 2 ** 64 if value >= 2 ** 63 else value


def test_fingerprints_are_the_exact_sums_modulo_2_64():
    x = torch.randn(3, 5, 7)
    bits = x.view(torch.int32).reshape(3, -1).tolist()
    weights = FingerprintWeights().get(35, torch.device("cpu")).tolist()
    assert all(w % 2 == 1 for row in weights for w in row)  # odd: a one-value change always shows
    expected = [tuple(signed64(sum(b * w for b, w in zip(sample, row))) for row in weights) for sample in bits]
    assert fingerprints(x) == expected
    assert fingerprints(x, chunk_elements=1) == expected  # chunking (a sample at a time) changes nothing


def test_fingerprint_weights_keep_their_prefix_when_they_grow():
    small, large = FingerprintWeights(), FingerprintWeights()
    first = small.get(10, torch.device("cpu")).clone()
    large.get((1 << 20) * 2 + 5, torch.device("cpu"))
    assert torch.equal(large.get(10, torch.device("cpu")), first)
    assert torch.equal(small.get((1 << 20) + 1, torch.device("cpu"))[:, :10], first)


def test_a_fingerprint_sees_every_value_and_its_lowest_bit_but_not_the_memory_layout():
    x = torch.rand(2, 3, 16, 16)
    base = fingerprints(x)
    for index in [(0, 0, 0, 0), (1, 2, 15, 15), (0, 1, 7, 3)]:
        y = x.clone()
        y.view(torch.int32)[index] ^= 1  # the float's lowest mantissa bit
        changed = fingerprints(y)
        sample = index[0]
        assert changed[sample] != base[sample] and changed[1 - sample] == base[1 - sample], index
    assert fingerprints(x.contiguous(memory_format=torch.channels_last)) == base
    assert fingerprints(torch.zeros(2, 4)) == [(0, 0), (0, 0)] and fingerprints(-torch.zeros(2, 4)) != [(0, 0), (0, 0)]


@pytest.mark.parametrize("on_disk", [True, False])
def test_a_video_head_caches_only_the_level_it_reads(tiny_entry, tmp_path, on_disk):  # a ViT's: test_families
    torch.manual_seed(0)
    head = config_from(VideoHeadConfig, dict(num_frames=4, depth=1, width=16, num_heads=2), "k400.head")
    model = VideoClassifier(build_backbone(tiny_entry, None, mode="frozen"), 3, head, tiny_entry.input_mean,
                            tiny_entry.input_std).eval()
    clips = torch.rand(2, 3, 4, 64, 64)
    with torch.no_grad():
        reference = model(clips)
        checkpoint = tmp_path / "weights.safetensors"
        checkpoint.write_bytes(b"the weights' stand-in: attach_feature_cache keys by this file's sha256")
        (cache,) = attach_feature_cache(model, checkpoint, tmp_path / "cache" if on_disk else None)
        assert cache.levels == (model.level,) == ("stage4",)
        cold, warm = model(clips), model(clips)
    assert torch.equal(cold, reference) and torch.equal(warm, reference)
    assert (cache.hits, cache.misses) == (8, 8)  # 2 clips x 4 frames, each frame a sample
    stored = next(iter(cache.memory.values())) if not on_disk else cache.load(cache.keys(
        ((clips.transpose(1, 2).reshape(8, 3, 64, 64) - model.mean) / model.std))[0])
    assert [tuple(f.shape) for f in stored] == [(model.backbone.channels[-1], 2, 2)]  # the last level only
    with pytest.raises(ValueError, match="stage9"):
        model.backbone.use_cache(FeatureCache("v" * 64, levels=["stage9"]))


def test_a_short_or_garbled_cache_file_is_a_miss_and_is_rewritten(tiny_entry, tmp_path, caplog):
    torch.manual_seed(0)
    backbone = build_backbone(tiny_entry, None, mode="frozen")
    x = torch.rand(4, 3, 64, 64)
    reference = backbone(x)
    backbone.use_cache(FeatureCache("g" * 64, tmp_path))
    backbone(x)
    files = sorted((tmp_path / ("g" * 16)).rglob("*.feat"))
    short, garbled = files[0], files[1]
    short.write_bytes(short.read_bytes()[:-100])   # a disk that filled up under another tool
    garbled.write_bytes(b"\x10" + b"\x00" * 7 + b"not json at all!")
    cache = FeatureCache("g" * 64, tmp_path)
    backbone.use_cache(cache)
    again = backbone(x)
    assert (cache.hits, cache.misses) == (2, 2)
    for name in backbone.names:  # two of four recomputed: a batch of 2 rounds differently from one of 4
        torch.testing.assert_close(again[name], reference[name], rtol=1e-5, atol=1e-6)
    assert str(short) in caplog.text and str(garbled) in caplog.text
    fresh = FeatureCache("g" * 64, tmp_path)
    backbone.use_cache(fresh)
    backbone(x)
    assert (fresh.hits, fresh.misses) == (4, 0)  # both files were rewritten whole


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
    loaded = two.load(key)
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


@pytest.mark.parametrize("task", ["coco", "k400"])
def test_a_vits_cached_map_gives_the_heads_and_their_pyramids_the_uncached_outputs(registry, tmp_path, task):
    """The cache holds the frozen ViT's stride-16 map; the trainable pyramid runs after it."""
    from conftest import TINY_HEAD

    from frozenrep.backbones import adapter_in
    from frozenrep.heads.coco import DetectionHeadConfig, build_mask_rcnn

    entry = registry["tiny-vit-none"]
    torch.manual_seed(0)
    backbone = build_backbone(entry, None, mode="frozen")
    if task == "coco":
        model = build_mask_rcnn(backbone, 4, config_from(DetectionHeadConfig, TINY_HEAD, "coco.head"),
                                entry.input_mean, entry.input_std).eval()
        inputs = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    else:
        head = config_from(VideoHeadConfig, dict(num_frames=4, depth=1, width=16, num_heads=2), "k400.head")
        model = VideoClassifier(backbone, 3, head, entry.input_mean, entry.input_std).eval()
        inputs = torch.rand(2, 3, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(inputs)
        checkpoint = tmp_path / "weights.safetensors"
        checkpoint.write_bytes(b"stand-in")
        (cache,) = attach_feature_cache(model, checkpoint, tmp_path / "cache")
        assert cache.levels in (None, ("plain",))
        cold, warm = model(inputs), model(inputs)
    flat = (lambda out: torch.cat([torch.cat([d["boxes"].flatten(), d["scores"]]) for d in out])) if task == "coco" \
        else (lambda out: out)
    assert cache.misses > 0 and cache.hits == cache.misses and flat(reference).numel() > 0
    assert torch.equal(flat(cold), flat(reference)) and torch.equal(flat(warm), flat(reference))
    assert adapter_in(model.backbone.body if task == "coco" else model.backbone).cache is cache
