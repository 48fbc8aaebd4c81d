"""ADE20K (SceneParsing, ADEChallengeData2016): <root>/images/<split>/*.jpg, <root>/annotations/<split>/*.png.

Label 0 is "other" and is ignored; 1..150 are the classes (reduce-zero-label:
0 -> 255, k -> k-1). Class names in mmseg's order, which is objectInfo150.csv's.
"""
from __future__ import annotations

from pathlib import Path

from .files import OnDisk, check_split, list_images, lookup_table, pair_labels

CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
]
SPLITS = {"training": "training", "validation": "validation", "train": "training", "val": "validation"}
LAYOUT = """\
  <data.root>/                  (the ADEChallengeData2016 folder)
    images/
      training/*.jpg
      validation/*.jpg
    annotations/
      training/*.png            (an image's stem; 0 = other, 1..150 = classes)
      validation/*.png"""
TABLE = lookup_table({0: 255} | {k: k - 1 for k in range(1, len(CLASSES) + 1)})
VALID = f"0..{len(CLASSES)} (0 = other, ignored)"


class ADE20K(OnDisk):
    name = "ade20k"
    num_classes = len(CLASSES)
    class_names = CLASSES
    LABELS = ((".png", TABLE, VALID),)

    def __init__(self, root, split: str = "training", **transform_kwargs):
        super().__init__(split, **transform_kwargs)
        folder = check_split("ADE20K", split, SPLITS)
        images = list_images("ADE20K", root, f"images/{folder}", "*.jpg", LAYOUT)
        self.root = Path(root)
        labels = self.root / "annotations" / folder
        self.pairs = pair_labels("ADE20K", images, lambda image: (labels / f"{image.stem}.png",))
