"""Kinetics-400: generated motion videos, PyTorchVideo loading, bad videos, the temporal head, top-k."""

import hashlib
import os
import tarfile

import pytest
import torch

from frozenrep.config import config_from
from frozenrep.data import k400
from frozenrep.data.k400 import (
    KineticsClips,
    KineticsIndex,
    annotation_csv,
    class_names,
    multiview_clips,
    read_csv,
    video_path,
)
from frozenrep.evaluation.k400 import evaluate_video, topk_accuracy
from frozenrep.heads.k400 import VideoClassifier, VideoHeadConfig
from frozenrep.synthetic import k400 as synthetic_k400


@pytest.fixture(scope="module")
def tiny_k400(tmp_path_factory):
    root = tmp_path_factory.mktemp("k400") / "k400"
    synthetic_k400.generate(root, num_train=8, num_val=4, num_classes=4, image_size=32, num_frames=16, fps=16, seed=0)
    return root


def test_generated_layout_and_csv(tiny_k400):
    summary = k400.verify_layout(tiny_k400)
    assert summary["classes"] == ["moving down", "moving left", "moving right", "moving up"]
    csv_sha256 = hashlib.sha256(annotation_csv(tiny_k400, "train").read_bytes()).hexdigest()
    assert summary["splits"]["train"] == {"rows": 8, "videos_present": 8, "sha256": csv_sha256}
    row = read_csv(annotation_csv(tiny_k400, "val"))[0]
    assert set(row) == {"label", "youtube_id", "time_start", "time_end", "split", "is_cc"}
    path = video_path(tiny_k400, "val", row)
    assert path.parent.name == row["label"] and path.name == f"{row['youtube_id']}_000000_000001.mp4"


def test_generation_is_deterministic(tmp_path, tiny_k400):
    synthetic_k400.generate(tmp_path / "again", num_train=8, num_val=4, num_classes=4, image_size=32, num_frames=16,
                      fps=16, seed=0)
    for path in sorted(tiny_k400.rglob("*.mp4")):
        assert path.read_bytes() == (tmp_path / "again" / path.relative_to(tiny_k400)).read_bytes()


def test_one_frame_cannot_tell_the_class_but_the_clip_can(tiny_k400):
    """Left and right movers look alike in any single frame; across frames the disc moves."""
    index = KineticsIndex(tiny_k400, "train", class_names(tiny_k400), 0.5)
    clips = KineticsClips(index, clip_duration=1.0, num_frames=8, size=32, hflip=False)
    for i in range(4):
        clip, label = clips[(i, 0)]
        bright = clip.mean(0) > 0.5                       # (T, H, W): where the disc is
        xs = [torch.nonzero(frame)[:, 1].float().mean() for frame in bright]
        dx = xs[-1] - xs[0]
        name = index.classes[label]
        if name in ("moving left", "moving right"):
            assert (dx < -3) if name == "moving left" else (dx > 3), (name, dx)


def test_random_training_clips_are_seeded(tiny_k400):
    index = KineticsIndex(tiny_k400, "train", class_names(tiny_k400), 0.5)
    clips = KineticsClips(index, clip_duration=0.5, num_frames=4, size=32)
    a, b = clips[(3, 11)], clips[(3, 11)]
    assert a[0].shape == (3, 4, 32, 32) and torch.equal(a[0], b[0]) and a[1] == b[1]
    starts = {clips[(3, s)][0][:, 0].sum().item() for s in range(6)}
    assert len(starts) > 1  # different seeds, different clip starts


def voluntary_context_switches() -> int:
    with open("/proc/self/status") as status:
        return sum(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="counts context switches in Linux /proc")
def test_training_clips_decode_without_handing_frames_to_other_threads(tiny_k400):
    """Decoding and RGB conversion stay in the calling thread (FFmpeg's slice threads and PyAV 17+'s
    threaded conversion block the job on every frame while other jobs hold the cores)."""
    index = KineticsIndex(tiny_k400, "train", class_names(tiny_k400), 0.5)
    clips = KineticsClips(index, clip_duration=0.5, num_frames=4, size=32)
    clips[(0, 0)]  # imports and first-use set-up
    before = voluntary_context_switches()
    for k in range(len(index.videos)):
        clips[(k, k)]
    assert voluntary_context_switches() - before < len(index.videos)  # threaded: 4 to 110 a video


def test_multiview_testing_uses_uniform_clips_and_crops(tiny_k400):
    index = KineticsIndex(tiny_k400, "val", class_names(tiny_k400), 0.5)
    views = list(multiview_clips(index, clip_duration=0.5, clips_per_video=2, num_frames=4, size=32,
                                 spatial_crops=3))
    assert [v[0] for v in views] == [0, 1, 2, 3]
    assert [v[1] for v in views] == [label for _, label in index.videos]
    assert all(v[2].shape == (6, 3, 4, 32, 32) for v in views)
    assert not torch.equal(views[0][2][0], views[0][2][3])  # the two clips differ


@pytest.mark.parametrize("frames", [1, 4, 8])
@pytest.mark.parametrize("depth", [0, 2])
def test_head_shapes_for_several_frame_counts(tiny_entry, frames, depth):
    from frozenrep.backbones import build_backbone

    head = config_from(VideoHeadConfig, dict(num_frames=frames, depth=depth, width=16, num_heads=2, level=1, spatial_pool=2), "k400.head")
    model = VideoClassifier(build_backbone(tiny_entry, None), 5, head, tiny_entry.input_mean, tiny_entry.input_std)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    logits = model(torch.rand(3, 3, frames, 32, 32))
    assert logits.shape == (3, 5) and calls == [3 * frames]  # all frames of all clips in one batch
    with pytest.raises(ValueError, match="num_frames"):
        model(torch.rand(1, 3, frames + 1, 32, 32))


def test_frozen_guarantee_for_the_video_head(tiny_entry, tiny_k400, tmp_path):
    from frozenrep.backbones import build_backbone
    from frozenrep.data.k400 import collate
    from frozenrep.heads.k400 import video_loss
    from frozenrep.training import TrainConfig, train

    torch.manual_seed(0)
    head = config_from(VideoHeadConfig, dict(num_frames=4, depth=1, width=16, num_heads=2, level=1, spatial_pool=2), "k400.head")
    model = VideoClassifier(build_backbone(tiny_entry, None, mode="frozen"), 4, head, tiny_entry.input_mean,
                            tiny_entry.input_std)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    clips = KineticsClips(KineticsIndex(tiny_k400, "train", class_names(tiny_k400), 0.5), clip_duration=0.5,
                          num_frames=4, size=32)
    classifier_before = model.classifier.weight.clone()
    train(model, clips, collate, video_loss, config_from(TrainConfig, dict(steps=2, batch_size=4, lr=1e-2), "$defs.train"), tmp_path, seed=0,
          fingerprint="v")
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert not torch.equal(classifier_before, model.classifier.weight)


def test_topk_and_per_video_score_averaging():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 1, 0])
    assert topk_accuracy(scores, labels, (1, 2)) == pytest.approx({"top1": 100 / 3, "top2": 200 / 3})
    assert topk_accuracy(scores, labels, (5,))["top5"] == 100.0  # k capped at the class count

    class Fixed(torch.nn.Module):  # logits chosen per view: the views of video 0 disagree
        def forward(self, views):
            return views[:, 0, 0, 0, :3]

    views0 = torch.tensor([[0.0, 3.0, 0.0], [0.0, 2.9, 0.0], [5.0, 0.0, 0.0]])  # 2 views say 1, 1 says 0 loudly
    views1 = torch.tensor([[0.0, 0.0, 4.0]])
    videos = [(0, 1, views0.view(3, 1, 1, 1, 3)), (1, 2, views1.view(1, 1, 1, 1, 3))]
    metrics, averaged = evaluate_video(Fixed(), videos, 2, torch.device("cpu"))
    # by hand: the mean of the three views' softmax is (0.3605, 0.6057, 0.0338), so video 0 is class 1 and
    # right (taking the loudest view's logits instead would make it class 0, and wrong); video 1 is right too
    torch.testing.assert_close(averaged[0], torch.tensor([0.3605, 0.6057, 0.0338]), atol=1e-4, rtol=0)
    assert metrics["top1"] == 100.0
    # top-5 of seven classes: the first label ranks fifth (in), the second sixth (out)
    seven = torch.tensor([[0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.05], [0.05, 0.08, 0.10, 0.12, 0.15, 0.20, 0.30]])
    assert topk_accuracy(seven, torch.tensor([4, 1]), (1, 5)) == {"top1": 0.0, "top5": 50.0}


def make_tar(path, files):
    with tarfile.open(path, "w:gz") as tf:
        for name, source in files:
            tf.add(source, arcname=name)


def test_cvdf_download_arranges_by_class_with_replacement_and_missing(tmp_path, tiny_k400, http_server):
    rows = {split: read_csv(annotation_csv(tiny_k400, split)) for split in ("train", "val")}
    def flat(split, row):
        return video_path(tiny_k400, split, row).name, video_path(tiny_k400, split, row)
    train_files = [flat("train", r) for r in rows["train"]]
    make_tar(tmp_path / "part_0.tar.gz", train_files[:4])
    make_tar(tmp_path / "part_1.tar.gz", train_files[4:])
    val_files = [flat("val", r) for r in rows["val"]]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    make_tar(tmp_path / "val_0.tar.gz", [(val_files[0][0], broken)] + val_files[1:3])  # val_files[3] is missing
    make_tar(tmp_path / "replacement.tgz", [(f"replacement/{val_files[0][0]}", val_files[0][1])])
    base = http_server.base
    for name in ("part_0.tar.gz", "part_1.tar.gz", "val_0.tar.gz", "replacement.tgz"):
        http_server.add(f"/k400/{name}", (tmp_path / name).read_bytes())
    http_server.add("/k400/train_path.txt", f"{base}/k400/part_0.tar.gz\n{base}/k400/part_1.tar.gz\n".encode())
    http_server.add("/k400/val_path.txt", f"{base}/k400/val_0.tar.gz\n".encode())
    for split in ("train", "val"):
        http_server.add(f"/k400/{split}.csv", annotation_csv(tiny_k400, split).read_bytes())
    settings = {"lists": {"train": f"{base}/k400/train_path.txt", "val": f"{base}/k400/val_path.txt"},
                "annotations": {"train": f"{base}/k400/train.csv", "val": f"{base}/k400/val.csv"},
                "replacement": f"{base}/k400/replacement.tgz", "downloads": tmp_path / "dl"}
    root = tmp_path / "data" / "k400"
    summary = k400.download(root, settings)
    assert summary["missing_videos"] == {"train": [], "val": [val_files[3][0]]}
    assert k400.verify_layout(root)["splits"]["train"]["videos_present"] == 8
    replaced = video_path(root, "val", rows["val"][0])
    assert replaced.read_bytes() == val_files[0][1].read_bytes()  # the replacement won over the corrupted copy
    assert not (root / "raw").exists() and (root / "missing_videos.json").exists()
