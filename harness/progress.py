"""A progress bar over a backend's runs, with one line per finished run."""
from __future__ import annotations

import sys

from .labels import settings_text


class RunBar:
    """A tqdm bar on stderr counting the runs by final state; each finished run gets a line."""

    def __init__(self, store, runs, desc: str, progress: bool = True):
        from tqdm import tqdm

        self.store, self.labels, self.counts = store, {r.run_id: r.settings for r in runs}, {}
        self.bar = tqdm(total=len(runs), desc=desc, unit="run", disable=not progress, dynamic_ncols=True,
                        file=sys.stderr)

    def show(self, **active) -> None:
        self.bar.set_postfix({**self.counts, **active})

    def note(self, text: str) -> None:
        self.bar.write(text)

    def finish(self, rid: str, state: str, **active) -> None:
        self.counts[state] = self.counts.get(state, 0) + 1
        self.show(**active)
        self.bar.update(1)
        status = self.store.status(rid)
        detail = f"mIoU {status.get('mIoU')}" if state == "done" else (status.get("error") or "")
        self.bar.write(f"  {state:<8} {rid}  {settings_text(self.labels[rid])}  {detail}")

    def close(self) -> None:
        self.bar.close()
