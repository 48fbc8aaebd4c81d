"""Executors behind one small interface (as submitit's): `run(store, runs,
executor) -> {run_id: final state}`. A backend only executes; the store keeps
the state."""
from __future__ import annotations

import importlib

NAMES = ("local", "slurm", "ray")


class BackendUnavailable(RuntimeError):
    """The backend's cluster cannot be reached; nothing was started."""


def get(name: str):
    if name not in NAMES:
        raise ValueError(f"backend {name!r} is not valid; valid: {', '.join(NAMES)}")
    try:
        return importlib.import_module(f"{__name__}.{name}").run
    except ModuleNotFoundError as err:
        if err.name == f"{__name__}.{name}":
            raise ValueError(f"backend {name!r} is not available in this version yet") from None
        raise
