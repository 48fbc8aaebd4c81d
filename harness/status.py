"""What `harness status` prints: one line per run of a sweep (its settings, state, progress, mIoU, job,
error), the cells of an experiment not created yet, and the counts."""
from __future__ import annotations

from pathlib import Path

from .labels import settings_text
from .selection import Selection, stored_runs
from .store import Store


def status_lines(store: Store, stale_after: float, select: Selection, sweep=None) -> list[str]:
    """One line per run of the store (the selected ones), and, given the experiment (`sweep`), one per
    cell not yet created; then the counts."""
    rows = store.rows(stale_after)
    if sweep is not None:
        planned = {run.run_id: run for run in sweep.runs}
        for row in rows:  # the experiment's axes name a run better than the spec fields that vary
            if row["run_id"] in planned:
                row["settings"] = planned[row["run_id"]].settings
        existing = {row["run_id"] for row in rows}
        new = [{"run_id": run.run_id, "settings": run.settings, "state": "new"}
               for run in sweep.runs if run.run_id not in existing]
        rows = stored_runs(store, rows, select) + new  # sweep.runs holds only the selected cells already
    else:
        rows = stored_runs(store, rows, select)
    rows.sort(key=lambda r: settings_text(r.get("settings", {})))
    width = max((len(settings_text(r.get("settings", {}))) for r in rows), default=0)
    lines = [f"sweep {store.sweep} ({store.dir}){' ' + select.text if select else ''}"]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
        lines.append(_line(store, row, width))
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines.append(f"{len(rows)} runs: {summary or 'none'}")
    return lines


def _line(store: Store, row: dict, width: int) -> str:
    state = row["state"]
    progress = ""
    if state == "running" and row.get("progress"):
        p = row["progress"]
        progress = f"{p['iteration']}/{p['iterations']}"
        if p.get("phase") not in (None, "training"):  # after the last iteration: what takes the time now
            progress += f" {p['phase']}"
    miou = f"mIoU {row['mIoU']:.2f}" if state == "done" and row.get("mIoU") is not None else ""
    error = (row.get("error") or "")[:80] if state in ("failed", "crashed", "cancelled") else ""
    if state == "corrupt":
        error = f"corrupt {corrupt_text(store, row['run_id'])}: `harness run` redoes it"
    if state == "new":
        error = "not created yet: `harness run` starts it"
    job = f"job {row['job_id']}" if row.get("job_id") and state != "done" else ""
    if row.get("log") and state != "done":
        job += f" log {short(row['log'])}"
    return (f"  {row['run_id']}  {settings_text(row.get('settings', {})):<{width}}  {state:<9} "
            f"{progress:>9} {miou:>11} {job} {error}".rstrip())


def corrupt_text(store: Store, run_id: str) -> str:
    return ", ".join(f"{name} ({why})" for name, why in store.corrupt_files(run_id).items())


def short(path: str) -> str:
    """A path relative to the current folder when it is below it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path
