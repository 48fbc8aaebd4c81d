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


def claim_all(store, runs, who: dict, stale_after: float) -> tuple[list, dict[str, str]]:
    """Claim each run for `who`: (the runs claimed, {run id: why not} for the others)."""
    claimed, others = [], {}
    for spec in runs:
        if store.claim(spec.run_id, who, stale_after):
            claimed.append(spec)
        else:
            others[spec.run_id] = "done elsewhere" if store.is_done(spec.run_id) else "running elsewhere"
    return claimed, others


class RunBar:
    """A progress bar over a backend's runs, with one line per finished run."""

    def __init__(self, store, runs, desc: str, progress: bool = True):
        import sys

        from tqdm import tqdm

        self.store, self.labels, self.counts = store, {r.run_id: r.settings for r in runs}, {}
        self.bar = tqdm(total=len(runs), desc=desc, unit="run", disable=not progress, dynamic_ncols=True,
                        file=sys.stderr)

    def show(self, **active) -> None:
        self.bar.set_postfix(**active, **self.counts)

    def note(self, text: str) -> None:
        self.bar.write(text)

    def finish(self, rid: str, state: str, **active) -> None:
        from ..matrix import settings_text

        self.counts[state] = self.counts.get(state, 0) + 1
        self.show(**active)
        self.bar.update(1)
        status = self.store.status(rid)
        detail = f"mIoU {status.get('mIoU')}" if state == "done" else (status.get("error") or "")
        self.bar.write(f"  {state:<8} {rid}  {settings_text(self.labels[rid])}  {detail}")

    def close(self) -> None:
        self.bar.close()
