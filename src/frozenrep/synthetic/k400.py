"""Generated Kinetics-400: videos whose class is how a shape moves, in the Kinetics layout (embedded default)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from frozenrep.data.k400 import CSV_FIELDS, annotation_csv, video_path
from frozenrep.io import write_text_atomic
from frozenrep.progress import Progress
from frozenrep.synthetic.shapes import SHAPES, shape_polygon

MOTIONS: dict[str, tuple[float, float]] = {
    "moving left": (-0.3, 0.0), "moving right": (0.3, 0.0), "moving up": (0.0, -0.3), "moving down": (0.0, 0.3),
    "moving left fast": (-0.45, 0.0), "moving right fast": (0.45, 0.0),
}


def write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """H.264 mp4 through PyAV, the same bytes every time: single-threaded, and without x264's
    assembly (``asm=0``). With its AVX-512 code (seen on a Xeon with avx512f/bw/vl) x264 gave a few
    different bytes, and frames up to 21 grey levels apart, when the same frames were encoded twice
    in one process; plain C encodes a 64-px clip in about 19 ms instead of 7."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"threads": "1", "crf": "18", "x264-params": "asm=0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def motion_video(rng: np.random.Generator, motion: tuple[float, float], size: int, num_frames: int,
                 fps: int, distractors: int = 0) -> list[np.ndarray]:
    """A bright shape (the actor) crossing a dark backdrop with the class's velocity (image widths
    per second; a path of up to 1.5 s stays in view).

    Without distractors the actor is a disc and the class is in the motion alone (one frame shows a
    disc somewhere, whatever the class). With ``distractors`` the actor is a star and as many other
    shapes (same colours and sizes) cross the clip in random class directions: the class is how the
    star moves, so a model has to recognise the actor by its shape as well as follow its motion, as
    a Kinetics action is what a particular actor does.
    """
    plain = np.clip(40 + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
    bg = Image.fromarray(plain)
    movers = [("circle" if distractors == 0 else "star", motion)]
    others = [s for s in SHAPES if s not in ("star", "circle")]
    directions = list(MOTIONS.values())[:4]
    for _ in range(distractors):
        movers.append((others[int(rng.integers(len(others)))], directions[int(rng.integers(len(directions)))]))
    paths = []
    for kind, (mx, my) in movers:
        radius = rng.uniform(size / 9, size / 7) if distractors == 0 else rng.uniform(size / 7, size / 5.5)
        colour = tuple(int(v) for v in rng.integers(200, 256, 3))
        vx, vy = mx * size / fps, my * size / fps
        # start so that the whole path stays in view
        span_x, span_y = abs(vx) * (num_frames - 1), abs(vy) * (num_frames - 1)
        x0 = rng.uniform(radius + (span_x if vx < 0 else 0), size - radius - (span_x if vx > 0 else 0))
        y0 = rng.uniform(radius + (span_y if vy < 0 else 0), size - radius - (span_y if vy > 0 else 0))
        paths.append((kind, radius, colour, vx, vy, x0, y0, rng.uniform(0, 2 * math.pi)))
    frames = []
    for t in range(num_frames):
        frame = bg.copy()
        draw = ImageDraw.Draw(frame)
        for kind, radius, colour, vx, vy, x0, y0, angle in reversed(paths):  # the actor is drawn last, on top
            draw.polygon(shape_polygon(kind, x0 + vx * t, y0 + vy * t, radius, angle), fill=colour)
        frames.append(np.asarray(frame))
    return frames


def generate(root: str | Path, *, num_train: int, num_val: int, num_classes: int, image_size: int,
             num_frames: int, fps: int, seed: int, distractors: int = 0) -> None:
    """Write Kinetics-layout videos whose class is the motion of a shape (deterministic by seed)."""
    labels = list(MOTIONS)[:num_classes]
    if not 2 <= num_classes <= len(MOTIONS):
        raise ValueError(f"num_classes must be between 2 and {len(MOTIONS)}, got {num_classes}")
    root = Path(root)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    duration = max(int(round(num_frames / fps)), 1)
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        rng = np.random.default_rng([seed, 200 + split_index])
        rows = []
        with Progress(count, f"generate k400 {split}", unit="video") as progress:
            for k in range(count):
                label = labels[k % num_classes]
                row = {"label": label, "youtube_id": f"{split[:2]}{seed:02d}{k:07d}", "time_start": "0",
                       "time_end": str(duration), "split": split, "is_cc": "0"}
                frames = motion_video(rng, MOTIONS[label], image_size, num_frames, fps, distractors)
                write_video(video_path(tmp, split, row), frames, fps)
                rows.append(row)
                progress.update()
        write_csv(annotation_csv(tmp, split), rows)
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    lines = [",".join(CSV_FIELDS)] + [",".join(_csv_field(r[f]) for f in CSV_FIELDS) for r in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def _csv_field(value: str) -> str:
    return f'"{value}"' if "," in value else value
