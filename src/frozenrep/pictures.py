"""Pictures of a run for people: its training curve, and the drawing tools of the prediction
pictures each task's ``pictures`` makes (frozenrep/tasks/<task>.py).

Every picture is a PNG written atomically. Prediction pictures put the ground truth (left) next
to the prediction (right): boxes and masks, class overlays, frames captioned with the true and
the predicted class. They are drawn with torchvision's drawing utilities, scaled up
(nearest neighbour) so that the embedded default's 64-128 px samples stay readable.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from frozenrep.io import atomic_path

MIN_SIDE = 256          # samples smaller than this are scaled up by an integer factor
CAPTION_HEIGHT = 18


def palette(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct colours (matplotlib's tab20, repeated)."""
    from matplotlib import colormaps

    colours = colormaps["tab20"].colors
    return [tuple(int(255 * c) for c in colours[k % len(colours)]) for k in range(count)]


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) float in [0, 1] (or uint8) -> uint8."""
    if image.dtype == torch.uint8:
        return image
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def upscale_factor(height: int, width: int) -> int:
    return max(1, -(-MIN_SIDE // min(height, width)))


def upscale(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upscaling of a (C, H, W) or (N, H, W) tensor by an integer factor."""
    return image.repeat_interleave(factor, -2).repeat_interleave(factor, -1) if factor > 1 else image


def captioned(panels: list[tuple[str, torch.Tensor]]) -> Image.Image:
    """Side-by-side uint8 (3, H, W) panels, each with its caption above it."""
    images = [Image.fromarray(p.permute(1, 2, 0).numpy()) for _, p in panels]
    width = sum(im.width for im in images) + 4 * (len(images) - 1)
    height = max(im.height for im in images) + CAPTION_HEIGHT
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    x = 0
    for (caption, _), im in zip(panels, images):
        draw.text((x + 2, 3), caption, fill="black")
        sheet.paste(im, (x, CAPTION_HEIGHT))
        x += im.width + 4
    return sheet


def save_png(image: Image.Image, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        image.save(tmp, format="PNG")
    return out


def draw_instances(image: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor | None, labels: list[str],
                   colours: list[tuple[int, int, int]]) -> torch.Tensor:
    """Masks (alpha 0.45) and labelled boxes on a uint8 image already scaled up."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    if len(boxes) == 0:
        return image
    if masks is not None and len(masks):
        image = draw_segmentation_masks(image, masks.bool(), alpha=0.45, colors=colours)
    return draw_bounding_boxes(image, boxes, labels=labels, colors=colours, width=2)


def class_overlay(image: torch.Tensor, labels: torch.Tensor, colours: list[tuple[int, int, int]],
                  ignore_index: int = 255) -> torch.Tensor:
    """Each class's pixels tinted with its colour (alpha 0.55); ignored pixels left as they are."""
    from torchvision.utils import draw_segmentation_masks

    present = [int(k) for k in torch.unique(labels) if int(k) != ignore_index]
    if not present:
        return image
    masks = torch.stack([labels == k for k in present])
    return draw_segmentation_masks(image, masks, alpha=0.55, colors=[colours[k] for k in present])


def plot_curve(curve: list[dict[str, float]], out: Path, title: str = "") -> Path:
    """The training curve: every loss term against the step (left), the learning rate (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in curve]
    losses = sorted({k for row in curve for k in row if k.startswith("train/loss")})
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [2, 1]})
    for key in losses:
        name = key.removeprefix("train/")
        left.plot(steps, [row.get(key, float("nan")) for row in curve], label=name,
                  linewidth=2.0 if name == "loss" else 1.0)
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    left.legend(fontsize=7, ncol=2)
    left.grid(alpha=0.3)
    right.plot(steps, [row.get("train/lr", float("nan")) for row in curve], color="black")
    right.set_xlabel("step")
    right.set_ylabel("learning rate")
    right.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    right.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out
