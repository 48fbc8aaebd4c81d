"""Iteration checkpoints in <run_dir>/checkpoints/: atomic, newest few kept,
a corrupt or unsafe newest one skipped for the one before it."""
from __future__ import annotations

import contextlib
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .io import Guard, atomic_torch_save, refuse_link

log = logging.getLogger(__name__)
_NAME = re.compile(r"^iter_(\d{8})\.pt$")
# Checkpoints load with weights_only: tensors and plain data, nothing that runs code. Older checkpoints
# hold numpy's random state, a uint32 array: these globals rebuild it and nothing else.
_reconstruct = np.empty(0).__reduce__()[0]
_OLD_FORMAT_GLOBALS = [np.ndarray, np.dtype, np.dtypes.UInt32DType,  # numpy 1 and numpy 2 name _reconstruct apart
                       (_reconstruct, "numpy.core.multiarray._reconstruct"),
                       (_reconstruct, "numpy._core.multiarray._reconstruct")]


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    folder = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in folder.glob("iter_*.pt") if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def rng_state() -> dict:
    name, keys, *rest = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, keys.tolist(), *rest), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]  # keys: a list, or an array in older checkpoints
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def remove_all(run_dir: Path, guard: Guard = contextlib.nullcontext) -> int:
    """Delete the run's checkpoints folder (not one that is a link, whose target is not the run's); the
    bytes freed."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir() or folder.is_symlink():
        return 0
    with guard():
        freed = sum(f.stat().st_size for f in folder.iterdir())
        shutil.rmtree(folder)
    return freed


def save(run_dir: Path, iteration: int, state: dict, keep: int, guard: Guard = contextlib.nullcontext) -> Path:
    """Write checkpoint `iteration` and remove all but the newest `keep`; each change to the folder
    happens inside `guard()` (io.atomic_write_bytes)."""
    path = Path(run_dir) / "checkpoints" / f"iter_{iteration:08d}.pt"
    refuse_link(path.parent, "checkpoints folder")
    with guard():
        for partial in path.parent.glob(".iter_*.tmp"):  # left by a process killed mid-save
            partial.unlink(missing_ok=True)
    atomic_torch_save(path, {**state, "iteration": iteration, "rng": rng_state()}, guard)
    # one numbered past this is a file that did not load (corrupt, or planted): it never displaces ours
    with guard():
        for old in [old for it, old in _checkpoints(run_dir) if it <= iteration][max(keep, 1):]:
            old.unlink(missing_ok=True)
    return path


def load_latest(run_dir: Path, map_location="cpu") -> dict | None:
    """The newest checkpoint that loads, or None. Corrupt or unsafe ones are reported and skipped."""
    with torch.serialization.safe_globals(_OLD_FORMAT_GLOBALS):
        for _, path in _checkpoints(run_dir):
            try:
                return torch.load(path, map_location=map_location, weights_only=True)
            except Exception as err:  # a truncated or garbled file, or one that would run code to load
                log.warning("checkpoint %s is unreadable (%s); trying the one before it", path, _why(path, err))
    return None


def _why(path: Path, err: Exception) -> str:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # reads, never unpickles
    except Exception as bad_file:  # not a readable torch.save file
        return f"{type(bad_file).__name__}: {bad_file}"
    if unsafe:
        return f"loading it would call {', '.join(sorted(unsafe))}, and only tensors and plain data are loaded"
    return f"{type(err).__name__}: {err}"
