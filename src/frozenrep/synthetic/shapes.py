"""Procedural shapes, textures and scenes, the raw material of every generated dataset.

The class of an object is its shape (COCO, K400's actor) or its texture (ADE20K's regions), both
together for the pretraining image sets; colour, size, rotation and background vary at random, so
a model has to see shape and pattern, not colour, to tell classes apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "hexagon")


@dataclass(frozen=True)
class PlacedShape:
    category: int          # index into the shape list
    polygon: list[float]   # x0, y0, x1, y1, ... in pixels (COCO polygon order)
    bbox: tuple[float, float, float, float]  # x, y, w, h


def shape_polygon(kind: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of the given kind centred at (cx, cy)."""
    if kind == "circle":
        pts = [(1.0, 2 * math.pi * k / 32) for k in range(32)]
    elif kind == "square":
        pts = [(1.0, math.pi / 4 + k * math.pi / 2) for k in range(4)]
    elif kind == "triangle":
        pts = [(1.0, -math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)]
    elif kind == "hexagon":
        pts = [(1.0, k * math.pi / 3) for k in range(6)]
    elif kind == "star":
        pts = [((1.0 if k % 2 == 0 else 0.45), -math.pi / 2 + k * math.pi / 5) for k in range(10)]
    elif kind == "cross":
        a, b = 1.0, 0.35
        corners = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b), (-a, b),
                   (-b, b), (-b, a)]
        pts = [(math.hypot(x, y) / math.sqrt(2) * 1.3, math.atan2(y, x)) for x, y in corners]
    else:
        raise ValueError(f"unknown shape {kind!r}; known: {SHAPES}")
    return [(cx + r * radius * math.cos(t + angle), cy + r * radius * math.sin(t + angle)) for r, t in pts]


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour gradient with pixel noise (``size`` x ``size`` x 3, uint8)."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, size)[None, :, None]
    if rng.random() < 0.5:
        t = t.transpose(1, 0, 2)
    img = c0 * (1 - t) + c1 * t
    img = np.broadcast_to(img, (size, size, 3)) + rng.normal(0, 12, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_scene(rng: np.random.Generator, size: int, num_objects: int, num_categories: int,
               min_radius: float, max_radius: float) -> tuple[Image.Image, list[PlacedShape]]:
    """An image with up to ``num_objects`` non-overlapping shapes and their polygons."""
    if not 1 <= num_categories <= len(SHAPES):
        raise ValueError(f"num_categories must be between 1 and {len(SHAPES)}, got {num_categories}")
    image = Image.fromarray(background(rng, size))
    draw = ImageDraw.Draw(image)
    placed: list[tuple[float, float, float]] = []
    shapes: list[PlacedShape] = []
    for _ in range(num_objects):
        for _attempt in range(30):
            radius = rng.uniform(min_radius, max_radius)
            cx, cy = rng.uniform(radius, size - radius, 2)
            if all(math.hypot(cx - x, cy - y) > radius + r + 2 for x, y, r in placed):
                break
        else:
            continue
        category = int(rng.integers(num_categories))
        verts = shape_polygon(SHAPES[category], cx, cy, radius, rng.uniform(0, 2 * math.pi))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.polygon(verts, fill=colour)
        xs, ys = [p[0] for p in verts], [p[1] for p in verts]
        x0, y0 = max(min(xs), 0.0), max(min(ys), 0.0)
        x1, y1 = min(max(xs), size), min(max(ys), size)
        placed.append((cx, cy, radius))
        shapes.append(PlacedShape(category, [round(v, 2) for p in verts for v in p],
                                  (round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2))))
    return image, shapes


TEXTURES = ("h-stripes", "v-stripes", "diagonal", "checker", "dots", "rings", "crosshatch", "grain")


def texture_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Where a ``size`` square of texture ``kind`` takes its first colour (bool, ``size`` x ``size``)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = 8.0  # one scale for every class: the pattern, not its size, tells classes apart
    phase = rng.uniform(0, period)
    if kind == "h-stripes":
        return ((yy + phase) % period) < period / 2
    if kind == "v-stripes":
        return ((xx + phase) % period) < period / 2
    if kind == "diagonal":
        return ((xx + yy + phase) % period) < period / 2
    if kind == "checker":
        return (((xx + phase) // (period / 2)) + ((yy + phase) // (period / 2))) % 2 == 0
    if kind == "dots":
        return (((xx + phase) % period) - period / 2) ** 2 + (((yy + phase) % period) - period / 2) ** 2 < (period / 3.5) ** 2
    if kind == "rings":
        cx, cy = rng.uniform(0, size, 2)
        return (np.hypot(xx - cx, yy - cy) % period) < period / 2
    if kind == "crosshatch":
        return (((xx + phase) % period) < period / 4) | (((yy + phase) % period) < period / 4)
    if kind == "grain":
        return rng.random((size, size)) < 0.5
    raise ValueError(f"unknown texture {kind!r}")


def texture_colours(rng: np.random.Generator) -> np.ndarray:
    """A texture's two colours (2 x 3, uint8): random, and always in high contrast."""
    c0 = rng.uniform(0, 255, 3)
    return np.stack([c0, 255 - c0]).astype(np.uint8)


def texture_pattern(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` square of texture ``kind`` in two random, high-contrast colours."""
    mask = texture_mask(kind, size, rng)
    first, second = texture_colours(rng)
    return np.where(mask[..., None], first, second)
