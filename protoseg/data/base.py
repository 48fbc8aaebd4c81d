"""The dataset interface every dataset family implements.

A subclass sets `name`, `num_classes`, `class_names`, implements `__len__`,
`load(index)` and `from_config(data_cfg, split)`. Indexing with an int gives the eval sample; indexing with
`(index, seed)` gives a train sample augmented by `np.random.default_rng(seed)`,
so augmentation depends only on the pair the sampler yields, never on worker
processes or global RNG state.
"""
from __future__ import annotations

import numpy as np
import torch

from .transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform


class SegDataset(torch.utils.data.Dataset):
    name = "base"
    ignore_index = IGNORE_INDEX
    num_classes: int
    class_names: list[str]

    def __init__(self, split: str, crop_size=(128, 128), ratio_range=(0.5, 2.0),
                 flip: bool = True, photometric: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.split = split
        self.crop_size = tuple(crop_size)
        self.ratio_range = tuple(ratio_range)
        self.flip = flip
        self.photometric = photometric
        self.mean, self.std = tuple(mean), tuple(std)

    @classmethod
    def from_config(cls, data_cfg: dict, split: str) -> "SegDataset":
        """Build from a resolved `data` section for role `split` ('train' or 'val')."""
        raise NotImplementedError

    @staticmethod
    def transform_kwargs(data_cfg: dict) -> dict:
        """The transform settings of a resolved `data` section, as constructor kwargs."""
        return {key: data_cfg[key] for key in ("crop_size", "ratio_range", "flip", "photometric", "mean", "std")}

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 HxWx3 RGB image, HxW label in train ids 0..K-1 with 255 = ignore)."""
        raise NotImplementedError

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed = key
            image, label = self.load(index)
            return train_transform(image, label, np.random.default_rng(seed), self.crop_size,
                                   self.ratio_range, self.flip, self.photometric, self.mean, self.std)
        return eval_transform(*self.load(key), self.mean, self.std)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
                f"len={len(self)}, num_classes={self.num_classes})")

