"""Datasets by name, and `build_dataset` from a resolved `data` section."""
from __future__ import annotations

from ..registry import DATASETS as _ENTRIES, load
from .base import SegDataset

DATASETS: dict[str, type[SegDataset]] = {name: load(entry.builder) for name, entry in _ENTRIES.items()}

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
