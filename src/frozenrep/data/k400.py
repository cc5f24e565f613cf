"""Kinetics-400: the CVDF download, layout checks, and loading with PyTorchVideo's data API (clip
samplers, PyAV decoding).

On disk (real after ``download`` arranges the CVDF tars by class, and as
:mod:`frozenrep.synthetic.k400` writes it)::

    <root>/annotations/{train,val}.csv                 label,youtube_id,time_start,time_end,split,is_cc
    <root>/videos/{train,val}/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4

The class list is the sorted set of labels in train.csv. Kinetics always has missing and
unreadable videos: they are counted, listed and left out (``on_bad_sample: skip``, the default
here), or stop the job with the file named (``error``); never dropped silently.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import av
import torch
from torch.utils.data import Dataset

from frozenrep.data import DatasetError
from frozenrep.io import file_digest, write_text_atomic
from frozenrep.progress import log
from frozenrep.randomness import seeded_rng

SPLITS = ("train", "val")


CSV_FIELDS = ("label", "youtube_id", "time_start", "time_end", "split", "is_cc")
# Motion classes: direction (dx, dy) in image widths per second.


def video_name(youtube_id: str, start: int, end: int) -> str:
    return f"{youtube_id}_{start:06d}_{end:06d}.mp4"


def annotation_csv(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"{split}.csv"


def video_path(root: Path, split: str, row: dict[str, str]) -> Path:
    return (Path(root) / "videos" / split / row["label"] /
            video_name(row["youtube_id"], int(float(row["time_start"])), int(float(row["time_end"]))))


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"{path} is missing: Kinetics ships annotations/{{train,val}}.csv.")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(CSV_FIELDS[:4]) - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{path} lacks the column(s) {sorted(missing)}; expected {','.join(CSV_FIELDS)}.")
        return list(reader)


def class_names(root: str | Path) -> list[str]:
    """The class list: the sorted labels of train.csv."""
    return sorted({row["label"] for row in read_csv(annotation_csv(Path(root), "train"))})


def verify_layout(root: str | Path) -> dict[str, Any]:
    """Check the Kinetics layout (csvs, class folders); return a summary or raise DatasetError."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Kinetics root {root} does not exist. Set datasets.k400.root to a folder with "
                           "annotations/ and videos/, or use source: download / generate.")
    classes = class_names(root)
    summary: dict[str, Any] = {"root": str(root), "classes": classes, "splits": {}}
    for split in SPLITS:
        rows = read_csv(annotation_csv(root, split))
        folder = root / "videos" / split
        if not folder.is_dir():
            raise DatasetError(f"{root} is not a Kinetics copy: {folder} is missing.")
        present = sum(1 for row in rows if video_path(root, split, row).is_file())
        summary["splits"][split] = {"rows": len(rows), "videos_present": present,
                                    "sha256": file_digest(annotation_csv(root, split))}
    return summary


def download(root: str | Path, settings: dict[str, Any], **fetch_kwargs: Any) -> dict[str, Any]:
    """Follow the CVDF distribution: per-split lists of tar files, the annotation csvs and the
    replacement archive for corrupted videos; extract safely and arrange the videos by class.

    Tars already downloaded are kept in ``downloads`` and resumed if partial (CVDF publishes no
    checksums). Videos named in a csv but absent from every tar are counted and listed in the
    returned summary (Kinetics always has some), never dropped silently.
    """
    from frozenrep.archives import extract
    from frozenrep.download import fetch

    root, downloads = Path(root), Path(settings["downloads"])
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    raw = tmp / "raw"
    rows_of: dict[str, list[dict[str, str]]] = {}
    for split in SPLITS:
        csv_file = annotation_csv(tmp, split)
        fetch(settings["annotations"][split], csv_file, **fetch_kwargs)
        rows_of[split] = read_csv(csv_file)
        listing = downloads / split / Path(settings["lists"][split]).name
        fetch(settings["lists"][split], listing, **fetch_kwargs)
        urls = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        for url in urls:
            archive = downloads / split / Path(url).name
            if not archive.exists():
                fetch(url, archive, **fetch_kwargs)
            extract(archive, raw / split)
    if settings.get("replacement"):
        archive = downloads / Path(settings["replacement"]).name
        if not archive.exists():
            fetch(settings["replacement"], archive, **fetch_kwargs)
        extract(archive, raw / "replacement")
    found = {p.name: p for p in sorted(raw.rglob("*.mp4"))}  # replacements sort after the split folders
    for replacement in sorted((raw / "replacement").rglob("*.mp4")) if (raw / "replacement").exists() else []:
        found[replacement.name] = replacement
    summary: dict[str, Any] = {"missing_videos": {}}
    for split in SPLITS:
        missing = []
        for row in rows_of[split]:
            name = video_name(row["youtube_id"], int(float(row["time_start"])), int(float(row["time_end"])))
            if name in found:
                target = video_path(tmp, split, row)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(found.pop(name)), target)
            else:
                missing.append(name)
        (tmp / "videos" / split).mkdir(parents=True, exist_ok=True)
        summary["missing_videos"][split] = missing
        if missing:
            log.warning("k400 %s: %d of %d videos in %s are in no archive", split, len(missing),
                        len(rows_of[split]), annotation_csv(root, split).name)
    shutil.rmtree(raw)
    verify_layout(tmp)
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    write_text_atomic(root / "missing_videos.json", json.dumps(summary, indent=2) + "\n")
    return summary


@dataclass
class BadVideo:
    path: str
    reason: str


def single_threaded_decoding(container: "av.container.InputContainer | None") -> None:
    """Decode the container's video in the calling thread.

    FFmpeg's default (slice threads, as many as there are cores) starts a thread pool for every
    opened file and hands each frame to it. A training job opens a file per clip, on a machine
    whose other cores run other jobs: the decoder then waits for its own threads to be scheduled.
    With two jobs on the 2-core machine a video training spent half of its wall time waiting so.
    Decoded pixels are the same either way. Call before the first frame is decoded.
    """
    if container is not None and container.streams.video:
        container.streams.video[0].thread_type = "NONE"
        container.streams.video[0].thread_count = 1


def probe(path: Path, min_duration: float) -> str | None:
    """Why a video cannot give one clip (missing, unreadable, too short), or None."""
    if not path.is_file():
        return "missing"
    try:
        with av.open(str(path)) as container:
            single_threaded_decoding(container)
            stream = container.streams.video[0]
            duration = float(stream.duration * stream.time_base) if stream.duration else (
                container.duration / av.time_base if container.duration else 0.0)
            frames = 0
            for frame in container.decode(stream):
                frames += 1
                if frames >= 2:
                    break
    except (av.error.FFmpegError, IndexError, OSError) as err:
        return f"unreadable ({type(err).__name__}: {err})"
    if frames == 0:
        return "unreadable (no decodable frame)"
    if duration < min_duration:
        return f"shorter than one clip ({duration:.2f} s < {min_duration:.2f} s)"
    return None


class KineticsIndex:
    """The usable videos of one split, after checking every csv row and class folder.

    ``bad`` lists every video left out with its reason; with ``on_bad_sample="error"`` the first
    one raises DatasetError naming it instead.
    """

    def __init__(self, root: str | Path, split: str, classes: list[str], clip_duration: float,
                 on_bad_sample: str = "skip") -> None:
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
        self.root, self.split, self.classes = Path(root), split, classes
        label_of = {name: i for i, name in enumerate(classes)}
        self.videos: list[tuple[str, int]] = []
        self.bad: list[BadVideo] = []
        csv_path = annotation_csv(self.root, split)

        def reject(path: str, reason: str) -> None:
            if on_bad_sample == "error":
                raise DatasetError(f"{path}: {reason}. Fix or remove it, or set on_bad_sample: skip.")
            self.bad.append(BadVideo(path, reason))

        folder = self.root / "videos" / split
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
            if class_dir.name not in label_of:
                reject(str(class_dir), f"class folder {class_dir.name!r} is not a class of "
                       f"{annotation_csv(self.root, 'train')}")
        for line, row in enumerate(read_csv(csv_path), start=2):
            if row["label"] not in label_of:
                reject(f"{csv_path}:{line}", f"unknown class {row['label']!r}")
                continue
            path = video_path(self.root, split, row)
            problem = probe(path, clip_duration)
            if problem:
                reject(str(path), problem)
            else:
                self.videos.append((str(path), label_of[row["label"]]))
        if self.bad:
            log.warning("k400 %s: %d of %d videos left out (missing, unreadable, short or unknown class)",
                        split, len(self.bad), len(self.bad) + len(self.videos))
        if not self.videos:
            raise DatasetError(f"no usable video in {folder} (checked {csv_path}).")

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(file, reason) of every video left out: reported in the log, the metrics file and MLflow."""
        return [(bad.path, bad.reason) for bad in self.bad]

    def __len__(self) -> int:
        return len(self.videos)


def frame_indices(num_available: int, num_frames: int) -> torch.Tensor:
    """Uniformly spaced frame indices (what a uniform temporal subsample takes)."""
    return torch.linspace(0, num_available - 1, num_frames).round().long()


def clip_transform(*, train: bool, size: int, num_frames: int, hflip: bool = True) -> Callable:
    """torchvision.transforms.v2 on a (T, C, H, W) clip: the same parameters for every frame.

    Training: resize the short side to ``size``, random square crop, horizontal flip (unless the
    classes depend on left/right, as the generated motions do). Testing: resize only; the views
    are cut by :func:`multiview_clips`.
    """
    from torchvision.transforms import v2

    steps = [v2.Resize(size, antialias=True)]
    if train:
        steps += [v2.RandomCrop(size)] + ([v2.RandomHorizontalFlip(0.5)] if hflip else [])
    pipeline = v2.Compose(steps)

    def apply(video: torch.Tensor) -> torch.Tensor:   # (C, T, H, W) float 0..255 from PyTorchVideo
        video = video[:, frame_indices(video.shape[1], num_frames)]
        frames = pipeline(video.permute(1, 0, 2, 3) / 255.0)
        return frames.permute(1, 0, 2, 3).contiguous()  # (C, T, H, W) in 0..1

    return apply


class KineticsClips(Dataset):
    """Training clips: for key ``(i, seed)`` a random clip of video ``i`` (PyTorchVideo's random clip
    sampler and PyAV decoding), transformed identically on all frames, reproducible by seed."""

    def __init__(self, index: KineticsIndex, *, clip_duration: float, num_frames: int, size: int,
                 hflip: bool = True) -> None:
        from pytorchvideo.data import make_clip_sampler

        self.index = index
        self.num_classes = len(index.classes)
        self.sampler = make_clip_sampler("random", clip_duration)
        self.transform = clip_transform(train=True, size=size, num_frames=num_frames, hflip=hflip)

    def __len__(self) -> int:
        return len(self.index.videos)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return self.index.skipped

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, seed = key if isinstance(key, tuple) else (key, 0)
        return self.augment(self.decode(i, seed), seed), self.index.videos[i][1]

    def decode(self, i: int, seed: int) -> torch.Tensor:
        """The raw frames (C, T, H, W, float 0..255) of video ``i``'s random clip for ``seed``."""
        from pytorchvideo.data.encoded_video import EncodedVideo

        video = EncodedVideo.from_path(self.index.videos[i][0], decode_audio=False, decoder="pyav")
        single_threaded_decoding(getattr(video, "_container", None))
        state = random.getstate()
        random.seed(seed)  # the clip sampler draws its start with the random module
        try:
            info = self.sampler(0.0, video.duration, None)
        finally:
            random.setstate(state)
        clip = video.get_clip(info.clip_start_sec, info.clip_end_sec)["video"]
        video.close()
        return clip

    def augment(self, clip: torch.Tensor, seed: int) -> torch.Tensor:
        """The training transform of a decoded clip, its random choices fixed by ``seed``."""
        with seeded_rng(seed):
            return self.transform(clip)


def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    clips, labels = zip(*batch)
    return torch.stack(clips), torch.tensor(labels)


def multiview_clips(index: KineticsIndex, *, clip_duration: float, clips_per_video: int, num_frames: int,
                    size: int, spatial_crops: int, videos: Sequence[int] | None = None):
    """Multi-view testing through ``pytorchvideo.data.LabeledVideoDataset``: uniformly spaced clips
    per video (constant-clips-per-video sampler), each cut into ``spatial_crops`` square crops along
    its longer side. Yields ``(video_index, label, views)`` with views (V, C, T, size, size), for
    the videos numbered in ``videos`` (default: all)."""
    from pytorchvideo.data import LabeledVideoDataset, make_clip_sampler
    from torchvision.transforms.v2 import functional as TF

    wanted = set(videos) if videos is not None else set()
    dataset = LabeledVideoDataset(
        [(path, {"label": label, "video_index": k}) for k, (path, label) in enumerate(index.videos)
         if videos is None or k in wanted],
        make_clip_sampler("constant_clips_per_video", clip_duration, clips_per_video),
        video_sampler=torch.utils.data.SequentialSampler, decode_audio=False, decoder="pyav")
    resize = clip_transform(train=False, size=size, num_frames=num_frames)
    current, views, label = None, [], None
    for sample in dataset:
        clip = resize(sample["video"])  # (C, T, h, w), short side = size
        c, t, h, w = clip.shape
        frames = clip.permute(1, 0, 2, 3)
        long_side = max(h, w)
        offsets = [0] if spatial_crops == 1 else [round(k * (long_side - size) / (spatial_crops - 1))
                                                  for k in range(spatial_crops)]
        if spatial_crops == 1:
            offsets = [(long_side - size) // 2]
        crops = [TF.crop(frames, *((o, 0) if h > w else (0, o)), size, size) for o in offsets]
        if sample["video_index"] != current and current is not None:
            yield current, label, torch.stack(views)
            views = []
        current, label = sample["video_index"], sample["label"]
        views.extend(crop.permute(1, 0, 2, 3) for crop in crops)
    if current is not None:
        yield current, label, torch.stack(views)


def centre_clip(path: str | Path, *, clip_duration: float, num_frames: int, size: int) -> torch.Tensor:
    """The middle ``clip_duration`` seconds of a video file as (C, T, size, size) in 0..1: PyAV
    decoding through PyTorchVideo, ``num_frames`` uniformly spaced frames, the short side resized to
    ``size`` and the centre square cut out (one test view)."""
    from pytorchvideo.data.encoded_video import EncodedVideo
    from torchvision.transforms.v2 import functional as TF

    try:
        video = EncodedVideo.from_path(str(path), decode_audio=False, decoder="pyav")
    except Exception as err:  # PyAV raises its own error types for unreadable files
        raise ValueError(f"cannot open video {path}: {err}") from err
    try:
        single_threaded_decoding(getattr(video, "_container", None))
        start = max(0.0, (float(video.duration) - clip_duration) / 2)
        decoded = video.get_clip(start, start + min(clip_duration, float(video.duration)))["video"]
    finally:
        video.close()
    if decoded is None:
        raise ValueError(f"no frames decoded from {path}")
    clip = clip_transform(train=False, size=size, num_frames=num_frames)(decoded)
    return TF.center_crop(clip.permute(1, 0, 2, 3), [size, size]).permute(1, 0, 2, 3).contiguous()
