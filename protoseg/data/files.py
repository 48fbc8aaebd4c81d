"""Datasets read from a folder: `OnDisk` (image / label pairs under data.root) and the helpers of its
loaders: `decode` (mmcv, an error naming the file), `check_split`, `split_folder` and `list_images`
(errors that show the expected layout), `pair_labels`, and `read_pair` with a `lookup_table` from raw
ids to train ids (-1 marks an id that is out of range)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import mmcv
import numpy as np

from ..io import expand_env
from .base import SegDataset


class OnDisk(SegDataset):
    """A dataset of `self.pairs` (image path, label path) under a root folder. A label file is read through
    the first of `LABELS` (name suffix, raw id -> train id table, the valid ids in words) its name ends with."""
    pairs: list[tuple[Path, Path]]
    LABELS: tuple[tuple[str, np.ndarray, str], ...] = ()

    @classmethod
    def from_config(cls, data_cfg: dict, split: str) -> "OnDisk":
        return cls(expand_env(data_cfg["root"]), data_cfg[f"{split}_split"], **cls.transform_kwargs(data_cfg))

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int):
        image, label = self.pairs[index]
        table, valid = next((t, v) for suffix, t, v in self.LABELS if label.name.endswith(suffix))
        return read_pair(image, label, table, valid)


def decode(path: Path, flag: str) -> np.ndarray:
    # cv2 returns None on undecodable bytes instead of raising
    array = mmcv.imfrombytes(path.read_bytes(), flag=flag, channel_order="bgr", backend="cv2")
    if array is None:
        raise ValueError(f"{path}: cannot decode the file as an image")
    return array


def check_split(dataset: str, split: str, splits: dict[str, str]) -> str:
    """The folder name of `split`; `splits` maps every accepted name (aliases too) to it."""
    if split not in splits:
        raise ValueError(f"{dataset}: split {split!r} is not valid; valid: {', '.join(splits)}")
    return splits[split]


def missing(dataset: str, what: str, root, layout: str) -> FileNotFoundError:
    """The error for a root that is absent or not in `layout` (a short tree, one entry a line)."""
    return FileNotFoundError(f"{dataset}: {what} (data.root = {root}); expected layout:\n{layout}")


def split_folder(dataset: str, root, relative: str, layout: str) -> Path:
    """<root>/<relative>, which must be a folder."""
    if root is None or not Path(root).is_dir():
        raise missing(dataset, "data.root is not a folder", root, layout)
    folder = Path(root) / relative
    if not folder.is_dir():
        raise missing(dataset, f"no folder {folder}", root, layout)
    return folder


def list_images(dataset: str, root, relative: str, pattern: str, layout: str) -> list[Path]:
    """The files matching `pattern` in <root>/<relative>, sorted; none is an error."""
    folder = split_folder(dataset, root, relative, layout)
    images = sorted(folder.glob(pattern))
    if not images:
        raise missing(dataset, f"no images ({pattern}) in {folder}", root, layout)
    return images


def pair_labels(dataset: str, images: list[Path],
                candidates: Callable[[Path], tuple[Path, ...]]) -> list[tuple[Path, Path]]:
    """Each image with the first of `candidates(image)` that exists; each label folder is listed once."""
    listed: dict[Path, set[str]] = {}
    pairs = []
    for image in images:
        options = candidates(image)
        for option in options:
            folder = option.parent
            if folder not in listed:
                listed[folder] = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
            if option.name in listed[folder]:
                pairs.append((image, option))
                break
        else:
            raise FileNotFoundError(f"{dataset}: no label {' or '.join(map(str, options))} for image {image}")
    return pairs


def read_pair(image_path: Path, label_path: Path, table: np.ndarray, valid: str) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, label in train ids) through a 256-entry `table` (-1: out of range; `valid` says what is)."""
    image = mmcv.bgr2rgb(decode(image_path, "color"))
    raw = decode(label_path, "unchanged")
    if raw.ndim != 2 or raw.dtype != np.uint8:
        raise ValueError(f"{label_path}: a label must be a single-channel 8-bit image, got shape "
                         f"{raw.shape} of {raw.dtype}")
    label = table[raw]
    bad = label < 0
    if bad.any():
        ids = ", ".join(str(i) for i in np.unique(raw[bad])[:5])
        raise ValueError(f"{label_path}: label id {ids} is out of range; valid ids are {valid}")
    if image.shape[:2] != label.shape:
        raise ValueError(f"{image_path} is {image.shape[:2]} but its label {label_path} is {label.shape}")
    return image, label.astype(np.uint8)


def train_id_table(num_classes: int) -> np.ndarray:
    """The table of a label file already in train ids: 0..K-1, and 255 (ignore)."""
    return lookup_table({k: k for k in range(num_classes)} | {255: 255})


def lookup_table(ids: dict[int, int], default: int = -1) -> np.ndarray:
    """A 256-entry table: raw id -> train id, `default` for every other id (-1: out of range)."""
    table = np.full(256, default, np.int16)
    for raw, train in ids.items():
        table[raw] = train
    return table
