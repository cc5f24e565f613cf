"""Pretraining the embedded default's backbones: the image set, SimMIM's masking and loss, the
supervised recipe, and the checkpoint they leave in the registry's format."""

import dataclasses

import numpy as np
import pytest
import torch
from workspace import REPO

from frozenrep.backbones import build_backbone
from frozenrep.checkpoints import create_model, load_registry, read_state_dict
from frozenrep.local_backbones import create_local_backbone
from frozenrep.pretraining import (PretrainingError, Recipe, SimMIM, build_pretrainer, classification_accuracy,
                                   supervised_loss)
from frozenrep.synthetic.images import ImageSetConfig, LabelledImages, class_catalogue, collate

REGISTRY = load_registry(REPO / "params" / "checkpoints.yaml")
PRETRAINED = ("tiny-swin-supervised", "tiny-swin-supervised-large", "tiny-swin-simmim",
              # table 4's families: a classifier that timm names fc (ResNet), head.fc (ConvNeXt), head (ViT)
              "tiny-resnet-supervised", "tiny-convnext-supervised", "tiny-vit-supervised", "tiny-vit-simmim")


def shrunk(name, steps=6, num_images=32, image_size=32, **train):
    """A registry entry with its pretraining cut to a few steps on a few small images."""
    entry = REGISTRY[name]
    images = {**entry.create["images"], "num_images": num_images, "image_size": image_size, "draw_size": 2 * image_size}
    if images.get("neutral_until"):
        images["neutral_until"] = [2, 4]  # neutral backdrops, then a mix, then scenes within the few steps
    create = {**entry.create, "images": images,
              "train": {**entry.create["train"], "steps": steps, "batch_size": 8, "warmup_steps": 0,
                        "checkpoint_every": 3, "log_every": 1, **train}}
    return dataclasses.replace(entry, create=create)


def test_small_set_classes_are_among_the_large_sets():
    small, every = class_catalogue(24), class_catalogue(48)
    assert every[:24] == small and len(set(every)) == 48  # every (shape, texture) once
    assert len({shape for shape, _ in small}) == 6 and len({texture for _, texture in small}) == 8
    with pytest.raises(PretrainingError, match="between 2 and 48"):
        class_catalogue(49)


def test_the_more_data_pretraining_holds_the_smaller_sets_classes_with_several_times_their_images():
    """"More data" as ImageNet-22K is to ImageNet-1K: the smaller set's concepts among its own, many
    more images of each, and its backbone scored on the smaller set's held-out classification."""
    small, large = Recipe.of(REGISTRY["tiny-swin-supervised"]), Recipe.of(REGISTRY["tiny-swin-supervised-large"])
    assert REGISTRY["tiny-swin-supervised-large"].arch_kwargs == REGISTRY["tiny-swin-supervised"].arch_kwargs
    a = LabelledImages(small.images, (0.5,) * 3, (0.25,) * 3)
    b = LabelledImages(large.images, (0.5,) * 3, (0.25,) * 3)
    assert set(a.classes) < set(b.classes) and b.classes[:len(a.classes)] == a.classes  # same labels for them

    def per_class(data):
        return np.bincount([data.label(k) for k in range(len(data))])

    assert per_class(b).min() >= 4 * per_class(a).min()  # "several times the images", of every class
    assert large.heldout_classes == small.images.num_classes and large.images.seed == small.images.seed


def test_held_out_top1_over_the_first_classes_chooses_among_those_alone():
    """A classifier that always ranks class 5 (outside the first four) first and the true class
    second is right only on class 5's images over its own six classes, always over the first four."""
    entry = shrunk("tiny-swin-supervised")
    recipe = Recipe.of(entry)
    data = LabelledImages(dataclasses.replace(recipe.images, num_classes=6), (0.5,) * 3, (0.25,) * 3)
    model = build_pretrainer(entry, dataclasses.replace(recipe, images=data.cfg))
    truth = []

    def scores(module, args, output):  # the true label: each held-out image is drawn from k's seed, label k % n
        labels = torch.tensor(truth[:output.shape[0]])
        del truth[:output.shape[0]]
        return torch.nn.functional.one_hot(labels, 6).float() + 2.0 * (torch.arange(6) == 5).float()

    model.register_forward_hook(scores)
    truth[:] = [k % 6 for k in range(18)]
    assert classification_accuracy(model, data, count=18, batch_size=8) == 100.0 * 3 / 18
    truth[:] = [k % 4 for k in range(18)]
    assert classification_accuracy(model, data, count=18, batch_size=8, classes=4) == 100.0


def test_image_set_is_deterministic_balanced_and_seeded():
    cfg = ImageSetConfig(num_images=24, num_classes=6, image_size=32, seed=3)
    a, b = LabelledImages(cfg, (0.5,) * 3, (0.25,) * 3), LabelledImages(cfg, (0.5,) * 3, (0.25,) * 3)
    assert np.array_equal(a.image(5), b.image(5)) and not np.array_equal(a.image(5), a.image(6))
    other = LabelledImages(dataclasses.replace(cfg, seed=4), (0.5,) * 3, (0.25,) * 3)
    assert not np.array_equal(a.image(5), other.image(5))
    assert np.bincount([a.label(k) for k in range(24)]).tolist() == [4] * 6
    b.materialise()
    x_lazy, y_lazy = a[(7, 11)]
    x_drawn, y_drawn = b[(7, 11)]
    assert torch.equal(x_lazy, x_drawn) and y_lazy == y_drawn and x_lazy.shape == (3, 32, 32)
    flipped = [a[(7, s)][0] for s in range(20)]  # the augmentation seed decides a horizontal flip
    assert any(torch.equal(f, x_lazy.flip(-1)) for f in flipped) and any(torch.equal(f, a[7][0]) for f in flipped)
    with pytest.raises(IndexError, match="outside the set of 24"):
        a.image(24)


def test_scale_augmentation_shows_the_drawn_patterns_at_other_scales():
    plain = ImageSetConfig(num_images=4, num_classes=4, image_size=32, seed=0, draw_size=64)
    cropped = dataclasses.replace(plain, crop_scale=(0.0625, 1.0))
    a, b = LabelledImages(plain, (0.5,) * 3, (0.25,) * 3), LabelledImages(cropped, (0.5,) * 3, (0.25,) * 3)
    assert a.image(1).shape == (64, 64, 3)  # drawn at draw_size
    whole = a[1][0]
    assert whole.shape == (3, 32, 32) and torch.equal(b[1][0], whole)  # tested whole, at image_size
    # without crop_scale a training view is the whole image, perhaps flipped
    assert all(torch.equal(a[(1, s)][0], whole) or torch.equal(a[(1, s)][0], whole.flip(-1)) for s in range(8))
    views = [b[(1, s)][0] for s in range(8)]
    assert all(v.shape == (3, 32, 32) for v in views)
    assert sum(not torch.equal(v, whole) and not torch.equal(v, whole.flip(-1)) for v in views) >= 6  # crops
    assert torch.equal(b[(1, 3)][0], views[3]) and not torch.equal(views[3], views[4])  # the seed decides
    with pytest.raises(PretrainingError, match="draw_size \\(16\\) must be at least image_size \\(32\\)"):
        ImageSetConfig(num_images=4, num_classes=4, image_size=32, draw_size=16)


def test_backdrop_curriculum_moves_from_neutral_backdrops_to_scenes():
    cfg = ImageSetConfig(num_images=8, num_classes=4, image_size=32, seed=0, neutral_until=(2, 6))
    assert [cfg.neutral_share(s) for s in (0, 1, 2, 4, 6, 9)] == [1, 1, 1, 0.5, 0, 0]
    lazy = LabelledImages(cfg, (0.5,) * 3, (0.25,) * 3)
    drawn = LabelledImages(cfg, (0.5,) * 3, (0.25,) * 3).materialise()
    assert lazy.keyed_by_step and not LabelledImages(dataclasses.replace(cfg, neutral_until=None), (0.5,) * 3,
                                                     (0.25,) * 3).keyed_by_step
    for k in range(8):
        scene, inside = lazy.draw(k)
        on_grey = drawn.on_neutral_backdrop(k)
        assert np.array_equal(on_grey, lazy.on_neutral_backdrop(k))  # the stored (bit-packed) masks are the drawn ones
        assert 0.05 < inside.mean() < 0.8 and np.array_equal(on_grey[inside], scene[inside])  # the object is unchanged
        backdrop = on_grey[~inside].astype(float)
        assert abs(backdrop.mean() - 128) < 3 and 8 < backdrop.std() < 16  # grey with the scenes' pixel noise
        assert not np.array_equal(backdrop, scene[~inside])

    def on_scene(view, k):
        whole = lazy[k][0]  # without an augmentation seed: the image on its scene
        return torch.equal(view, whole) or torch.equal(view, whole.flip(-1))

    for k in (1, 6):
        assert not any(on_scene(lazy[(k, s, 0)][0], k) for s in range(10))  # before start: all neutral
        assert all(on_scene(lazy[(k, s, 6)][0], k) for s in range(10))  # from end on: all scenes
        assert 10 < sum(on_scene(lazy[(k, s, 4)][0], k) for s in range(40)) < 30  # half way: about half
        assert torch.equal(lazy[(k, 5, 4)][0], drawn[(k, 5, 4)][0])  # the seed and step decide
    with pytest.raises(PretrainingError, match="need \\(index, aug_seed, step\\)"):
        lazy[(1, 5)]
    with pytest.raises(PretrainingError, match="neutral_until must be \\[start, end\\] steps"):
        dataclasses.replace(cfg, neutral_until=(6, 2))


@pytest.mark.parametrize("name", ["tiny-swin-simmim", "tiny-vit-simmim"])
def test_simmim_masks_the_requested_share_and_never_sees_masked_pixels(name):
    entry = REGISTRY[name]
    torch.manual_seed(0)
    model = build_pretrainer(entry, Recipe.of(entry)).eval()
    assert isinstance(model, SimMIM)
    mask = model.random_mask(4, 64, 64, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (4, 4, 4) and mask.sum(dim=(1, 2)).tolist() == [round(0.6 * 16)] * 4
    images = torch.randn(2, 3, 64, 64)
    mask = mask[:2]
    pixel_mask = mask.repeat_interleave(16, 1).repeat_interleave(16, 2).unsqueeze(1).bool()
    changed = torch.where(pixel_mask, torch.randn_like(images), images)  # new pixels under the mask only
    with torch.no_grad():
        rec, loss = model(images, mask)
        rec_changed, loss_changed = model(changed, mask)
        _, loss_unmasked = model(torch.where(pixel_mask, images, torch.randn_like(images)), mask)
    assert rec.shape == images.shape
    assert torch.allclose(rec, rec_changed, atol=1e-5)  # the encoder saw the mask token, not the pixels
    assert not torch.isclose(loss, loss_changed)  # ... but the loss compares against them
    expected = ((images - rec).abs() * pixel_mask).sum() / pixel_mask.sum() / 3
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    assert loss_unmasked != pytest.approx(loss.item())  # visible pixels change what it reconstructs
    with pytest.raises(PretrainingError, match="not a multiple of mask_patch_size 16"):
        model.random_mask(1, 40, 40)


def test_simmim_refuses_a_cnn_and_says_which_recipe_fits():
    entry = dataclasses.replace(REGISTRY["tiny-convnext-supervised"], create=REGISTRY["tiny-vit-simmim"].create)
    with pytest.raises(PretrainingError, match="plain ViT timm model, not ConvNeXt .*init: supervised"):
        build_pretrainer(entry, Recipe.of(entry))


def test_supervised_pretraining_learns_the_classes():
    entry = shrunk("tiny-swin-supervised")
    recipe = Recipe.of(entry)
    data = LabelledImages(dataclasses.replace(recipe.images, num_images=16, num_classes=4), (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    model = build_pretrainer(entry, dataclasses.replace(recipe, images=data.cfg))
    batch = collate([data[k] for k in range(16)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = supervised_loss(model, batch)["loss_cls"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (model(batch[0]).argmax(1) == batch[1]).float().mean() > 0.5
    assert not any(k.startswith("head.") for k in model.backbone_state_dict())


@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_checkpoint_is_reproducible_and_loads_as_a_backbone(tmp_path, name):
    entry = shrunk(name)
    tracking = {"uri": f"sqlite:///{tmp_path / 'mlruns.db'}"}
    first = create_local_backbone(entry, tmp_path / "a" / f"{name}.safetensors", tracking, "t")
    second = create_local_backbone(entry, tmp_path / "b" / f"{name}.safetensors", tracking, "t")
    assert first == second  # same recipe, same bytes
    assert (tmp_path / "a" / f"{name}.safetensors.sha256").read_text().split()[0] == first
    random_init = create_local_backbone(REGISTRY["tiny-swin-none"], tmp_path / "none.safetensors")
    assert random_init != first
    weights = read_state_dict(tmp_path / "a" / f"{name}.safetensors")
    # the backbone's keys only: no classifier, decoder or mask token (ConvNeXt's head.norm is backbone)
    assert set(weights) == set(create_model(entry).state_dict())
    backbone = build_backbone(entry, tmp_path / "a" / f"{name}.safetensors")  # strict load
    fresh = build_backbone(entry, None)  # the architecture at random weights: the same maps
    shapes = [f.shape for f in backbone(torch.randn(1, 3, 64, 64)).values()]
    assert shapes == [f.shape for f in fresh(torch.randn(1, 3, 64, 64)).values()] and shapes[-1][1] >= 64
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking["uri"])
    everything = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    parent = [r for r in everything if r.data.tags.get("role") == "table"]
    runs = [r for r in everything if r.data.tags.get("role") != "table"]
    assert [p.info.run_name for p in parent] == ["table1"]  # pretraining runs are children of the table's run
    assert len(runs) == 2 and {r.data.tags["task"] for r in runs} == {"pretrain"}
    assert {r.info.run_name for r in runs} == {f"pretrain-{name}-full-s{Recipe.of(entry).seed}"}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent[0].info.run_id}
    assert all(r.info.status == "FINISHED" and "pretrain/seconds" in r.data.metrics for r in runs)


@pytest.mark.parametrize("name", ["tiny-swin-supervised", "tiny-swin-simmim"])
def test_killed_pretraining_resumes_to_the_same_weights(tmp_path, monkeypatch, name):
    import frozenrep.training as training

    entry = shrunk(name, steps=6)
    tracking = {"uri": f"sqlite:///{tmp_path / 'mlruns.db'}"}
    whole = create_local_backbone(entry, tmp_path / "whole" / "x.safetensors", tracking)
    save_state = training.save_state

    def save_then_die(path, state):
        save_state(path, state)
        raise RuntimeError("killed after the step-3 state")

    monkeypatch.setattr(training, "save_state", save_then_die)
    out = tmp_path / "resumed" / "x.safetensors"
    with pytest.raises(RuntimeError, match="killed"):
        create_local_backbone(entry, out, tracking)
    assert not out.exists() and torch.load(out.with_name("x.pretrain") / "state.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(training, "save_state", save_state)
    assert create_local_backbone(entry, out, tracking) == whole


@pytest.mark.parametrize("change, message", [
    ({"init": "byol"}, "create.init 'byol' is not one of random, supervised, simmim"),
    ({"images": None}, "create.images is required for init supervised"),
    ({"colour": "red"}, "create has unknown keys \\['colour'\\]"),
    ({"images": {"num_images": 10, "classes": 3}}, "create.images"),
    ({"images": {"num_images": 10, "num_classes": 3, "crop_scale": [0.5, 2.0]}}, "create.images: images.crop_scale"),
    ({"images": {"num_images": 10, "num_classes": 3, "neutral_until": [300]}}, "create.images: images.neutral_until"),
    ({"heldout_classes": 25}, "create.heldout_classes \\(25\\) needs init: supervised and a count between 2 and images.num_classes"),
])
def test_bad_recipe_names_the_entry_and_key(change, message):
    entry = REGISTRY["tiny-swin-supervised"]
    create = {k: v for k, v in {**entry.create, **change}.items() if v is not None}
    with pytest.raises(PretrainingError, match=f"registry entry tiny-swin-supervised: {message}"):
        Recipe.of(dataclasses.replace(entry, create=create))
