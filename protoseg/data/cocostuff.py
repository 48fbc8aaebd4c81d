"""COCO-Stuff, 171 classes (80 things, 91 stuff), in mmseg's converted layouts.

COCOStuff164k: <root>/images/{train2017,val2017}/<stem>.jpg and
<root>/annotations/{train2017,val2017}/<stem>_labelTrainIds.png (0..170,
255 = ignore). Without that file the raw stuffthingmap <stem>.png (ids 0..181,
255 = unlabeled) is read and mapped as mmseg's coco_stuff164k.py converter
does: the 11 COCO thing ids never used (11, 25, 28, 29, 44, 65, 67, 68, 70, 82,
90) are dropped and the other 171 ids renumbered in order.

COCOStuff10k: <root>/images/{train2014,test2014}/<stem>.jpg,
<root>/annotations/{train2014,test2014}/<stem>_labelTrainIds.png and
<root>/imageLists/{train,test}.txt (one stem a line). mmseg's coco_stuff10k.py
converter writes train ids 1..171 with 0 = unlabeled, so mmseg reads them with
reduce-zero-label (0 -> 255, k -> k-1), as this loader does.
"""
from __future__ import annotations

from pathlib import Path

from .files import (OnDisk, check_split, list_images, lookup_table, pair_labels, split_folder,
                    train_id_table)


CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge", "building-other",
    "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes",
    "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
    "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other",
    "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
]
UNUSED_THING_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
RAW_IDS = [raw for raw in range(182) if raw not in UNUSED_THING_IDS]  # raw id of each train id
TRAIN_IDS = train_id_table(len(CLASSES))
FROM_RAW = lookup_table({raw: k for k, raw in enumerate(RAW_IDS)} | {raw: 255 for raw in UNUSED_THING_IDS}
                        | {255: 255})
REDUCE_ZERO = lookup_table({0: 255, 255: 255} | {k: k - 1 for k in range(1, len(CLASSES) + 1)})
LAYOUT_164K = """\
  <data.root>/
    images/
      train2017/<stem>.jpg
      val2017/<stem>.jpg
    annotations/
      train2017/<stem>_labelTrainIds.png  (0..170, 255 = ignore; mmseg's coco_stuff164k.py)
                 or <stem>.png            (raw stuffthingmap: 0..181, 255 = unlabeled)
      val2017/   (the same)"""
LAYOUT_10K = """\
  <data.root>/
    images/
      train2014/<stem>.jpg
      test2014/<stem>.jpg
    annotations/
      train2014/<stem>_labelTrainIds.png  (1..171, 0 = unlabeled; mmseg's coco_stuff10k.py)
      test2014/<stem>_labelTrainIds.png
    imageLists/
      train.txt, test.txt                 (one stem a line; without them, every image of the folder)"""


class COCOStuff164k(OnDisk):
    name = "coco_stuff164k"
    num_classes = len(CLASSES)
    class_names = CLASSES
    LABELS = (("_labelTrainIds.png", TRAIN_IDS, f"0..{len(CLASSES) - 1} and 255 (ignore)"),
              (".png", FROM_RAW, "0..181 (raw stuffthingmap ids) and 255 (unlabeled)"))

    def __init__(self, root, split: str = "train2017", **transform_kwargs):
        super().__init__(split, **transform_kwargs)
        folder = check_split("COCO-Stuff-164k", split, {"train2017": "train2017", "val2017": "val2017",
                                                        "train": "train2017", "val": "val2017"})
        images = list_images("COCO-Stuff-164k", root, f"images/{folder}", "*.jpg", LAYOUT_164K)
        self.root = Path(root)
        labels = self.root / "annotations" / folder
        self.pairs = pair_labels("COCO-Stuff-164k", images, lambda image: (
            labels / f"{image.stem}_labelTrainIds.png", labels / f"{image.stem}.png"))


class COCOStuff10k(OnDisk):
    name = "coco_stuff10k"
    num_classes = len(CLASSES)
    class_names = CLASSES
    LABELS = (("_labelTrainIds.png", REDUCE_ZERO, f"0..{len(CLASSES)} (0 = unlabeled, ignored) and 255"),)

    def __init__(self, root, split: str = "train", **transform_kwargs):
        super().__init__(split, **transform_kwargs)
        name = check_split("COCO-Stuff-10k", split, {"train": "train", "test": "test", "val": "test",
                                                     "train2014": "train", "test2014": "test"})
        image_dir = split_folder("COCO-Stuff-10k", root, f"images/{name}2014", LAYOUT_10K)
        self.root = Path(root)
        list_file = self.root / "imageLists" / f"{name}.txt"
        if list_file.is_file():
            images = [image_dir / f"{stem}.jpg" for stem in list_file.read_text().split()]
            for image in images:
                if not image.is_file():
                    raise FileNotFoundError(f"COCO-Stuff-10k: {list_file} lists {image.stem}, but {image} "
                                            "does not exist")
        else:
            images = list_images("COCO-Stuff-10k", root, f"images/{name}2014", "*.jpg", LAYOUT_10K)
        labels = self.root / "annotations" / f"{name}2014"
        self.pairs = pair_labels("COCO-Stuff-10k", images,
                                 lambda image: (labels / f"{image.stem}_labelTrainIds.png",))
