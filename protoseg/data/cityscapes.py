"""Cityscapes (gtFine): <root>/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png with labels in
<root>/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png (0..18, 255 = ignore).

Without a labelTrainIds file, <stem>_gtFine_labelIds.png is read and its ids
mapped to the 19 train ids as cityscapesscripts' labels.py does (every other
id, e.g. 0 unlabeled or 34 and above, becomes 255).
"""
from __future__ import annotations

from pathlib import Path

from .files import OnDisk, check_split, list_images, lookup_table, pair_labels, train_id_table

CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
           "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
           "bicycle"]
LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)  # of CLASSES, in order
SPLITS = {"train": "train", "val": "val", "test": "test"}
LAYOUT = """\
  <data.root>/
    leftImg8bit/
      {train,val,test}/<city>/<stem>_leftImg8bit.png
    gtFine/
      {train,val,test}/<city>/<stem>_gtFine_labelTrainIds.png  (0..18, 255 = ignore)
                          or <stem>_gtFine_labelIds.png      (ids of cityscapesscripts' labels.py)"""
TRAIN_IDS = train_id_table(len(CLASSES))
FROM_LABEL_IDS = lookup_table({raw: k for k, raw in enumerate(LABEL_IDS)}, default=255)
VALID = f"0..{len(CLASSES) - 1} and 255 (ignore)"
IMAGE_SUFFIX = "_leftImg8bit.png"


def label_files(root: Path, split: str, image: Path) -> tuple[Path, Path]:
    folder, stem = root / "gtFine" / split / image.parent.name, image.name[: -len(IMAGE_SUFFIX)]
    return folder / f"{stem}_gtFine_labelTrainIds.png", folder / f"{stem}_gtFine_labelIds.png"


class Cityscapes(OnDisk):
    name = "cityscapes"
    num_classes = len(CLASSES)
    class_names = CLASSES
    LABELS = (("_labelTrainIds.png", TRAIN_IDS, VALID), ("_labelIds.png", FROM_LABEL_IDS, "any 0..255"))

    def __init__(self, root, split: str = "train", **transform_kwargs):
        super().__init__(split, **transform_kwargs)
        folder = check_split("Cityscapes", split, SPLITS)
        images = list_images("Cityscapes", root, f"leftImg8bit/{folder}", f"*/*{IMAGE_SUFFIX}", LAYOUT)
        self.root = Path(root)
        self.pairs = pair_labels("Cityscapes", images, lambda image: label_files(self.root, folder, image))
