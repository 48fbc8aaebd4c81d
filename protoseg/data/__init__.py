"""Datasets by name, and `build_dataset` from a resolved `data` section."""
from __future__ import annotations

import importlib

from ..registry import DATASETS as _PATHS
from .base import SegDataset


def _class(path: str) -> type[SegDataset]:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


DATASETS: dict[str, type[SegDataset]] = {name: _class(path) for name, path in _PATHS.items()}

ROLES = ("train", "val")


def build_dataset(data_cfg: dict, split: str) -> SegDataset:
    """The dataset of `data_cfg['dataset']` for role `split` ('train' or 'val')."""
    name = data_cfg["dataset"]
    if name not in DATASETS:
        raise ValueError(f"data.dataset: unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if split not in ROLES:
        raise ValueError(f"build_dataset: split {split!r} is not valid; valid: {', '.join(ROLES)}")
    return DATASETS[name].from_config(data_cfg, split)


__all__ = ["DATASETS", "SegDataset", "build_dataset"]
