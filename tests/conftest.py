import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/reference_official.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_spec(**sections) -> dict:
    """A run spec small enough to train in seconds on a CPU."""
    spec = {
        "model": {"backbone": "resnet18", "num_prototypes": 2},
        "data": {"crop_size": [64, 64], "batch_size": 2,
                 "synthetic": {"image_size": [64, 64], "num_train": 8, "num_val": 4}},
        "train": {"iterations": 6, "checkpoint_interval": 2, "log_interval": 1, "progress": False,
                  "threads": 1},
        "eval": {"complexity_size": [64, 64]},
    }
    for name, values in sections.items():
        spec[name].update(values)
    return spec


@pytest.fixture
def spec():
    return tiny_spec()
