"""SyntheticScenes: the embedded default dataset, generated in memory.

A scene is a background region plus a few ellipses and polygons; every region
is one class drawn in one of that class's `modes_per_class` visual modes. A
mode is a (colour, texture) pair. Mode m of every class uses texture m
(stripes, dots, checker, flat, then the same at a coarser period) and colour
(k + m * step) % K, so the colours of the modes interleave across classes:
with K=4, M=2, class 0 is red stripes or cyan dots and class 2 is cyan stripes
or red dots. Neither colour nor texture alone, nor a class's mean appearance,
identifies the class; the pair does. That is what makes several prototypes per
class worth having.

Scene `index` of a split is drawn from `np.random.default_rng([seed, split, index])`,
so it is the same in every process, and train and val never share a scene.
"""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

from .base import SegDataset

SPLITS = ("train", "val")
TEXTURES = ("stripes", "dots", "checker", "flat")


def mode_colour(k: int, m: int, num_classes: int, modes_per_class: int) -> np.ndarray:
    """RGB uint8 colour of class k's mode m: evenly spaced hues, interleaved across classes."""
    step = max(1, num_classes // modes_per_class)
    hue = ((k + m * step) % num_classes) / num_classes
    return np.array(colorsys.hsv_to_rgb(hue, 0.75, 0.9)) * 255


def texture(m: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Texture of mode m in [0, 1] (1 = darkened), with a random period, phase and tilt."""
    kind = TEXTURES[m % len(TEXTURES)]
    period = rng.uniform(6, 10) * (1 + m // len(TEXTURES))
    tilt = rng.uniform(-0.3, 0.3)
    u = (np.cos(tilt) * xx + np.sin(tilt) * yy) * 2 * np.pi / period + rng.uniform(0, 2 * np.pi)
    v = (np.cos(tilt) * yy - np.sin(tilt) * xx) * 2 * np.pi / period + rng.uniform(0, 2 * np.pi)
    if kind == "stripes":
        return (np.sin(u + v) > 0).astype(np.float32)
    if kind == "dots":
        return (np.sin(u) * np.sin(v) > 0.5).astype(np.float32)
    if kind == "checker":
        return (np.sin(u) * np.sin(v) > 0).astype(np.float32)
    return np.zeros_like(yy, dtype=np.float32)


def region_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random ellipse or star-shaped polygon, as a bool mask."""
    mask = np.zeros((h, w), np.uint8)
    size = min(h, w)
    centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
    if rng.random() < 0.5:
        axes = (int(rng.uniform(0.1, 0.35) * size), int(rng.uniform(0.1, 0.35) * size))
        cv2.ellipse(mask, centre, axes, rng.uniform(0, 180), 0, 360, 1, thickness=-1)
    else:
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.1, 0.4, n) * size
        points = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [points.round().astype(np.int32)], 1)
    return mask.astype(bool)


def make_scene(rng: np.random.Generator, num_classes: int, modes_per_class: int, size):
    """(uint8 HxWx3 RGB image, uint8 HxW class label, uint8 HxW mode map) of one scene."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    num_regions = int(rng.integers(3, 7))
    # a permutation first, so that every class is likely to be in every scene
    classes = np.concatenate([rng.permutation(num_classes), rng.integers(0, num_classes, num_regions)])
    label = np.zeros((h, w), np.uint8)
    mode = np.zeros((h, w), np.uint8)
    image = np.zeros((h, w, 3), np.float32)
    for i in range(num_regions + 1):
        mask = np.ones((h, w), bool) if i == 0 else region_mask(rng, h, w)
        k, m = int(classes[i]), int(rng.integers(0, modes_per_class))
        shade = rng.uniform(0.85, 1.15) * (1 - 0.45 * texture(m, yy, xx, rng))
        image[mask] = (shade[..., None] * mode_colour(k, m, num_classes, modes_per_class))[mask]
        label[mask], mode[mask] = k, m
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label, mode


class SyntheticScenes(SegDataset):
    name = "synthetic"

    def __init__(self, split: str = "train", num_classes: int = 4, modes_per_class: int = 2,
                 image_size=(128, 128), num_train: int = 64, num_val: int = 16, seed: int = 0,
                 **transform_kwargs):
        if split not in SPLITS:
            raise ValueError(f"SyntheticScenes: split {split!r} is not valid; valid: {', '.join(SPLITS)}")
        if num_classes < 1 or modes_per_class < 1:
            raise ValueError("data.synthetic: num_classes and modes_per_class must be >= 1, got "
                             f"{num_classes} and {modes_per_class}")
        super().__init__(split, **transform_kwargs)
        self.num_classes = num_classes
        self.modes_per_class = modes_per_class
        self.image_size = tuple(image_size)
        self.length = num_train if split == "train" else num_val
        self.seed = seed
        self.class_names = [f"class{k}" for k in range(num_classes)]
        self._cache: dict[int, tuple] = {}

    @classmethod
    def from_config(cls, data_cfg: dict, split: str) -> "SyntheticScenes":
        return cls(split, **data_cfg["synthetic"], **cls.transform_kwargs(data_cfg))

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int):
        """(image, label, mode map) of scene `index`; the mode map says which mode drew each pixel."""
        if not 0 <= index < self.length:
            raise IndexError(f"SyntheticScenes[{self.split}]: index {index} out of range 0..{self.length - 1}")
        if index not in self._cache:
            rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
            self._cache[index] = make_scene(rng, self.num_classes, self.modes_per_class, self.image_size)
        return self._cache[index]

    def load(self, index: int):
        image, label, _ = self.scene(index)
        return image, label
