"""Iteration checkpoints in <run_dir>/checkpoints/: atomic, newest few kept,
a corrupt newest one skipped for the one before it."""
from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import numpy as np
import torch

from .io import atomic_torch_save

log = logging.getLogger(__name__)
_NAME = re.compile(r"^iter_(\d{8})\.pt$")


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    folder = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in folder.glob("iter_*.pt") if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, iteration: int, state: dict, keep: int) -> Path:
    path = Path(run_dir) / "checkpoints" / f"iter_{iteration:08d}.pt"
    for partial in path.parent.glob(".iter_*.tmp"):  # left by a process killed mid-save
        partial.unlink(missing_ok=True)
    atomic_torch_save(path, {**state, "iteration": iteration, "rng": rng_state()})
    for _, old in _checkpoints(run_dir)[max(keep, 1):]:
        old.unlink(missing_ok=True)
    return path


def load_latest(run_dir: Path, map_location="cpu") -> dict | None:
    """The newest checkpoint that loads, or None. Corrupt ones are reported and skipped."""
    for _, path in _checkpoints(run_dir):
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err:  # a truncated or garbled file: any unpickling error
            log.warning("checkpoint %s is unreadable (%s: %s); trying the one before it",
                        path, type(err).__name__, err)
    return None
