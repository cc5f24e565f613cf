"""The labelled image sets the embedded default's tiny backbones are pretrained on.

Classes are combinations of shape and texture, drawn in random colours (colour is not part of the
class: a classifier that leant on colour would learn nothing that transfers). Image ``k`` of a set
is drawn from its own seed, so the set is the same on every machine and needs no storage.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from frozenrep.progress import Progress
from frozenrep.randomness import seeded_rng
from frozenrep.synthetic.shapes import SHAPES, TEXTURES, background, shape_polygon, texture_colours, texture_mask

# Colour families of the objects' patterns (lightness varies too); not part of the class.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (220, 50, 40), "green": (40, 190, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
}


class PretrainingError(ValueError):
    """A pretraining recipe that cannot be run; the message names the registry entry and key."""


def class_catalogue(num_classes: int) -> list[tuple[str, str]]:
    """The first ``num_classes`` (shape, texture) combinations in a fixed shuffled order.

    A smaller set's classes are a subset of a larger set's, as ImageNet-1K's are of ImageNet-22K's.
    """
    every = list(itertools.product(SHAPES, TEXTURES))
    if not 2 <= num_classes <= len(every):
        raise PretrainingError(f"num_classes must be between 2 and {len(every)}, got {num_classes}")
    order = np.random.default_rng(12345).permutation(len(every))
    return [every[i] for i in order[:num_classes]]


def neutral_backdrop(rng: np.random.Generator, size: int) -> np.ndarray:
    """Mid-grey with the scenes' pixel noise, as a product photograph's backdrop."""
    return np.clip(128 + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)


def draw_labelled_image(rng: np.random.Generator, shape: str, texture: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One object of the class (its shape filled with its texture, in a random colour family) on a
    random scene; the image and the object's pixel mask.

    The texture's two colours are recoloured: each becomes the colour family's hue, or a dark shade
    of it, by whether the colour is light (its mean above 127); computed once per colour and then
    painted where the texture has it."""
    image = background(rng, size)
    radius = rng.uniform(size * 0.22, size * 0.42)
    cx, cy = rng.uniform(size * 0.3, size * 0.7, 2)
    verts = shape_polygon(shape, cx, cy, radius, rng.uniform(0, 2 * math.pi))
    region = Image.new("L", (size, size), 0)
    ImageDraw.Draw(region).polygon(verts, fill=1)
    inside = np.array(region, dtype=bool)
    first = texture_mask(texture, size, rng)
    colours = texture_colours(rng).astype(np.float32)  # (2, 3): where `first`, elsewhere
    light = (colours.mean(axis=-1, keepdims=True) > 127).astype(np.float32)
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    hue = np.array(COLOURS[colour], dtype=np.float32) * rng.uniform(0.75, 1.15)
    tones = np.clip(light * hue + (1 - light) * hue * rng.uniform(0.15, 0.4), 0, 255).astype(np.uint8)
    image[inside & first] = tones[0]
    image[inside & ~first] = tones[1]
    return image, inside


@dataclass
class ImageSetConfig:
    """The generated labelled image set (``create.images`` of a registry entry).

    Images are drawn at ``draw_size`` (default: ``image_size``) and the network sees them at
    ``image_size``: in training through a random resized crop whose area is a ``crop_scale``
    fraction of the drawn image (aspect ratio 3/4..4/3, torchvision's RandomResizedCrop, as the
    ImageNet recipes of Swin and SimMIM use), when testing resized whole. Drawing at twice the size
    with ``crop_scale: [0.0625, 1.0]`` shows every pattern at 0.5x to 2x its drawn scale, the range
    the downstream heads' scale jitter covers; without it a backbone knows the patterns at one scale.

    ``neutral_until: [start, end]`` is a backdrop curriculum: until step ``start`` every training
    image shows its object on a neutral grey backdrop instead of its scene (the random colour
    gradients the generated COCO and ADE20K images have too), then the share of neutral backdrops
    falls linearly to none at step ``end``. On scenes alone the tiny Swin stays at chance loss for
    a run-dependent number of steps, on the 48-class set for a whole 1000-step run in every run
    measured; on neutral backdrops it learns from the first few hundred, and what it learned carries
    over to the scenes. Held-out accuracy is measured on scenes.
    """

    num_images: int
    num_classes: int
    image_size: int = 64
    seed: int = 0
    draw_size: int | None = None
    crop_scale: tuple[float, float] = (1.0, 1.0)
    neutral_until: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.draw_size = int(self.draw_size or self.image_size)
        if self.neutral_until is not None:
            if (len(self.neutral_until) != 2 or not all(isinstance(v, int) for v in self.neutral_until)
                    or not 0 <= self.neutral_until[0] <= self.neutral_until[1]):
                raise PretrainingError(f"images.neutral_until must be [start, end] steps with 0 <= start <= end, "
                                       f"got {self.neutral_until!r}")
            self.neutral_until = tuple(self.neutral_until)
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        if self.draw_size < self.image_size:
            raise PretrainingError(f"images.draw_size ({self.draw_size}) must be at least image_size ({self.image_size})")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise PretrainingError(f"images.crop_scale must be [low, high] with 0 < low <= high <= 1, got {list(self.crop_scale)}")

    @property
    def crops(self) -> bool:
        return self.crop_scale != (1.0, 1.0)

    def neutral_share(self, step: int) -> float:
        """The share of training images on a neutral backdrop at ``step``."""
        if self.neutral_until is None:
            return 0.0
        start, end = self.neutral_until
        if step < start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / (end - start)) if end > start else 0.0


class LabelledImages(Dataset):
    """``num_images`` generated images; ``dataset[k]``, ``dataset[(k, aug_seed)]`` or, with a backdrop
    curriculum, ``dataset[(k, aug_seed, step)]`` -> (CHW float, label).

    Images are normalised with the backbone's ``input_mean``/``input_std``; the augmentation
    (backdrop, crop, flip) is decided by ``aug_seed``.
    """

    NEUTRAL_TILES = 16  # neutral backdrops drawn once per set, one per image picked by its index

    def __init__(self, cfg: ImageSetConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        if cfg.num_images < 1:
            raise PretrainingError(f"num_images must be at least 1, got {cfg.num_images}")
        self.cfg = cfg
        self.classes = class_catalogue(cfg.num_classes)
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        # the training views' random resized crop (its draws come from the sample's seed, at call time)
        self.crop = v2.RandomResizedCrop(cfg.image_size, scale=cfg.crop_scale, antialias=True) if cfg.crops else None
        self._pixels: np.ndarray | None = None
        self._masks: np.ndarray | None = None  # bit-packed object masks, for the backdrop curriculum
        self._tiles: np.ndarray | None = None

    @property
    def keyed_by_step(self) -> bool:
        """Whether training samples depend on the step (the backdrop curriculum)."""
        return self.cfg.neutral_until is not None

    def materialise(self) -> "LabelledImages":
        """Draw every image once, up front (a training run visits each many times)."""
        if self._pixels is None:
            size = self.cfg.draw_size
            pixels = np.empty((len(self), size, size, 3), dtype=np.uint8)
            masks = np.empty((len(self), (size * size + 7) // 8), dtype=np.uint8) if self.keyed_by_step else None
            with Progress(len(self), f"draw {len(self)} pretraining images", unit="img") as progress:
                for k in range(len(self)):
                    pixels[k], inside = self.draw(k)
                    if masks is not None:
                        masks[k] = np.packbits(inside)
                    progress.update()
            self._pixels, self._masks = pixels, masks
        return self

    def __len__(self) -> int:
        return self.cfg.num_images

    def label(self, index: int) -> int:
        return index % self.cfg.num_classes  # balanced classes

    def draw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index`` on its scene, and its object's mask."""
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} is outside the set of {len(self)}")
        rng = np.random.default_rng([self.cfg.seed, index])
        return draw_labelled_image(rng, *self.classes[self.label(index)], self.cfg.draw_size)

    def image(self, index: int) -> np.ndarray:
        return self.draw(index)[0]

    def on_neutral_backdrop(self, index: int) -> np.ndarray:
        """Image ``index`` with its scene replaced by a neutral backdrop (the object is unchanged)."""
        size = self.cfg.draw_size
        if self._tiles is None:
            self._tiles = np.stack([neutral_backdrop(np.random.default_rng([self.cfg.seed, 1, t]), size)
                                    for t in range(self.NEUTRAL_TILES)])
        if self._masks is not None:
            pixels = self._pixels[index]
            inside = np.unpackbits(self._masks[index], count=size * size).reshape(size, size).astype(bool)
        else:
            pixels, inside = self.draw(index)
        return np.where(inside[..., None], pixels, self._tiles[index % self.NEUTRAL_TILES])

    def __getitem__(self, key: int | tuple[int, int] | tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        """Without ``aug_seed`` the whole image on its scene at ``image_size``; with it, the training
        view (at ``step``, on a neutral backdrop with the curriculum's share; random resized crop when
        ``crop_scale`` says so; horizontal flip), its choices fixed by the seed."""
        index, aug_seed, step = (tuple(key) + (None, None))[:3] if isinstance(key, tuple) else (key, None, None)
        if step is not None and not self.keyed_by_step:
            raise PretrainingError("a step was given but images.neutral_until is not set")
        if self.keyed_by_step and aug_seed is not None and step is None:
            raise PretrainingError("images.neutral_until is set: training views need (index, aug_seed, step)")
        size = self.cfg.image_size
        with seeded_rng(aug_seed) if aug_seed is not None else torch.random.fork_rng(devices=[]):
            if step is not None and float(torch.rand(())) < self.cfg.neutral_share(step):
                pixels = self.on_neutral_backdrop(index)
            else:
                pixels = self._pixels[index] if self._pixels is not None else self.image(index)
            image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() / 255.0
            if aug_seed is None:
                if self.cfg.draw_size != size:
                    image = TF.resize(image, [size, size], antialias=True)
            else:
                if self.crop is not None:
                    image = self.crop(image)
                elif self.cfg.draw_size != size:
                    image = TF.resize(image, [size, size], antialias=True)
                if torch.rand(()) < 0.5:
                    image = image.flip(-1)
        return (image - self.mean) / self.std, self.label(index)


def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*batch)
    return torch.stack(images), torch.tensor(labels)
