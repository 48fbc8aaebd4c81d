"""Tiny datasets in the real on-disk layout of each dataset that reads data.root, for smoke runs and tests.

`write_fixture(name, root)` writes a train and a val split (COCO-Stuff-10k:
train and test) of `images` frames each: smooth random images (JPEG or PNG as
the real layout names them) and block labels whose ids are drawn from the
dataset's raw id space, with a band of its ignore id at the top. Cityscapes and
COCO-Stuff-164k get both the raw labels and the converted labelTrainIds files,
as their converters leave them.

A dataset's registry entry names its writer (root, split, count, rng, size); a
writer is built from `smooth_image`, `block_label` and `write_image`.
"""
from __future__ import annotations

from pathlib import Path

import mmcv
import numpy as np

from ..registry import DATASETS, load
from .cityscapes import FROM_LABEL_IDS
from .cocostuff import FROM_RAW, RAW_IDS


def smooth_image(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    ramp = np.linspace(0, 1, h)[:, None, None] * rng.uniform(0, 200, 3) + np.linspace(0, 1, w)[None, :, None] * 55
    return np.clip(ramp + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def block_label(rng: np.random.Generator, size: tuple[int, int], ids, ignore: int, block: int = 8) -> np.ndarray:
    h, w = size
    grid = rng.choice(np.asarray(ids, np.uint8), (h // block + 1, w // block + 1))
    label = np.repeat(np.repeat(grid, block, 0), block, 1)[:h, :w].copy()
    label[:2] = ignore
    return label


def write_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not mmcv.imwrite(array, str(path)):
        raise OSError(f"{path}: could not write the fixture file")


def camvid(root, split, count, rng, size):
    lines = []
    for i in range(count):
        stem = f"{split}_{i:04d}"
        write_image(root / split / f"{stem}.png", smooth_image(rng, size))
        write_image(root / f"{split}annot" / f"{stem}.png", block_label(rng, size, range(12), 11))
        lines.append(f"{split}/{stem}.png {split}annot/{stem}.png\n")
    (root / f"{split}.txt").write_text("".join(lines))


def ade20k(root, split, count, rng, size):
    folder = {"train": "training", "val": "validation"}[split]
    for i in range(count):
        stem = f"ADE_{split}_{i + 1:08d}"
        write_image(root / "images" / folder / f"{stem}.jpg", smooth_image(rng, size))
        write_image(root / "annotations" / folder / f"{stem}.png", block_label(rng, size, range(151), 0))


def cityscapes(root, split, count, rng, size):
    city = {"train": "aachen", "val": "frankfurt"}[split]
    for i in range(count):
        stem = f"{city}_{i:06d}_000019"
        write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", smooth_image(rng, size))
        label_ids = block_label(rng, size, range(34), 0)
        write_image(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label_ids)
        write_image(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png",
               FROM_LABEL_IDS[label_ids].astype(np.uint8))


def coco_stuff164k(root, split, count, rng, size):
    folder = f"{split}2017"
    for i in range(count):
        stem = f"{i + 1:012d}"
        write_image(root / "images" / folder / f"{stem}.jpg", smooth_image(rng, size))
        raw = block_label(rng, size, RAW_IDS + [255], 255)
        write_image(root / "annotations" / folder / f"{stem}.png", raw)
        write_image(root / "annotations" / folder / f"{stem}_labelTrainIds.png", FROM_RAW[raw].astype(np.uint8))


def coco_stuff10k(root, split, count, rng, size):
    name = {"train": "train", "val": "test"}[split]
    stems = [f"COCO_{name}2014_{i + 1:012d}" for i in range(count)]
    for stem in stems:
        write_image(root / "images" / f"{name}2014" / f"{stem}.jpg", smooth_image(rng, size))
        write_image(root / "annotations" / f"{name}2014" / f"{stem}_labelTrainIds.png", block_label(rng, size, range(172), 0))
    (root / "imageLists").mkdir(exist_ok=True)
    (root / "imageLists" / f"{name}.txt").write_text("".join(f"{stem}\n" for stem in stems))


def write_fixture(name: str, root, images: int = 4, size=(64, 96), seed: int = 0) -> Path:
    """Write dataset `name` (one whose registry entry names a fixture) under `root`; returns the folder to set
    as data.root."""
    writers = {n: entry.fixture for n, entry in DATASETS.items() if entry.fixture}
    if name not in writers:
        raise ValueError(f"write_fixture: no fixture for dataset {name!r}; valid: {', '.join(writers)}")
    writer = load(writers[name])
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        writer(root, split, images, rng, tuple(size))
    return root
