"""`harness run`'s policy over a planned sweep: what each selected cell needs (the plan), old results
set aside, the runs handed to their backend under a signal guard, and the exit code of how they ended."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from protoseg import config, provenance

from . import backends, matrix, smoke
from .labels import settings_text
from .matrix import MatrixError, RunSpec, Sweep
from .selection import Selection
from .status import corrupt_text
from .store import ACTIVE, Store, StoreError, check_locking, each_run

STARTS = ("run", "resume", "rerun")  # the first word of a plan's action that starts the run


class Stopped(Exception):
    """A signal stopped the sweep (Ctrl-C, SIGTERM, SIGHUP); running runs wrote a checkpoint."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def load(file: str, results: Path, overrides: list, profile: str | None, only: list[str] | None, smoke_run: bool,
         max_cells: int) -> tuple[Store, Sweep, int | None]:
    """The experiment's cells that `only` selects, planned at the spec version its sweep was first planned at
    (None: a new sweep), with the sweep's store; a smoke run's sweep is the smoke one. MatrixError when none is
    selected."""
    name = matrix.sweep_name_of(file)
    store = Store(results, smoke.sweep_name(name) if smoke_run else name, backends.alive)
    planned_at = store.spec_version()
    select = Selection(only)
    sweep = matrix.load(file, overrides, profile, select=select, spec_version=planned_at,
                        smoke_results=results if smoke_run else None, max_cells=max_cells)
    if not sweep.runs:
        raise MatrixError(f"{file}: {select.text} matches none of its {sweep.cells} cells; nothing done")
    return store, sweep, planned_at


def check_inputs(sweep: Sweep, results: Path, smoke_run: bool, dry_run: bool) -> list[str]:
    """A smoke run's generated data written, then every cell's data and weights checked (matrix.check_inputs):
    the warnings. A smoke dry run writes no data, so it has nothing to check."""
    if smoke_run and not dry_run:
        smoke.write_data(results, {run.value("data.dataset") for run in sweep.runs})
    return [] if smoke_run and dry_run else matrix.check_inputs(sweep, dry_run)


def plan(store: Store, runs: list[RunSpec], force: bool, retry_failed: bool, stale_after: float,
         follow_backend: str | None = None) -> list[tuple[RunSpec, str]]:
    """Each selected cell with what `harness run` does about it: run, resume, rerun, follow or skip (why).
    `follow_backend`: the backend whose jobs outlive their driver (SLURM); a run held by one of its jobs, handed out
    by an earlier `harness run`, is waited on with the new ones rather than skipped."""
    out, existing = [], set(store.run_ids())
    for spec in runs:
        state = store.state(spec.run_id, stale_after) if spec.run_id in existing else "pending"
        if state == "done":
            action = "rerun" if force else "skip (done)"
        elif state in ACTIVE:
            status = store.status(spec.run_id)
            job = f" as {status.get('backend', '').upper()} job {status['job_id']}" if status.get("job_id") else ""
            verb = "follow" if job and follow_backend and status.get("backend") == follow_backend else "skip"
            action = f"{verb} ({state}{job or ' elsewhere'})"
        elif state == "failed":
            action = ("resume" if store.has_checkpoint(spec.run_id) else "run") if retry_failed \
                else "skip (failed; --retry-failed)"
        else:
            action = "resume" if spec.run_id in existing and store.has_checkpoint(spec.run_id) else "run"
            if state == "corrupt":
                action += f" (corrupt {corrupt_text(store, spec.run_id)}: set aside)"
        out.append((spec, action))
    return out


def plan_lines(sweep: Sweep, store: Store, plan: list[tuple[RunSpec, str]]) -> list[str]:
    width = max((len(settings_text(r.settings)) for r in sweep.runs), default=0)
    lines = [f"sweep {sweep.name}: {sweep.cells} cells, {len(sweep.runs)} selected -> {store.dir}"]
    return lines + [f"  {spec.run_id}  {settings_text(spec.settings):<{width}}  {action}" for spec, action in plan]


def to_run(plan: list[tuple[RunSpec, str]]) -> list[RunSpec]:
    return [spec for spec, action in plan if action.split()[0] in STARTS]


def to_follow(plan: list[tuple[RunSpec, str]]) -> list[RunSpec]:
    return [spec for spec, action in plan if action.startswith("follow")]


def dry_run_text(sweep: Sweep, store: Store, todo: list[RunSpec], backend) -> str:
    """What `--dry-run` adds to the plan: how many would run, and how the backend would run them."""
    text = f"dry run: {len(todo)} would run (the matrix: {sweep.product} cells before exclude and duplicates)"
    if todo:
        try:
            text += "\n\n" + backend.describe(store, todo, sweep.executor)
        except backends.BackendUnavailable as err:
            text += f"\n({sweep.executor['backend']}: {err})"
    return text


def prepare(store: Store, sweep: Sweep, plan: list[tuple[RunSpec, str]], todo: list[RunSpec],
            planned_at: int | None, trust_flock: bool = False) -> None:
    """Before anything starts: no links where the runs write, working flock shared between mounts (or
    `trust_flock`), the sweep recorded, done runs to rerun and corrupt files set aside (never deleted), each
    run's folder ready and its old cancel gone."""
    linked = store.links([spec.run_id for spec in todo])
    if linked:
        more = f" (and {len(linked) - 1} more link(s) there)" if len(linked) > 1 else ""
        raise StoreError(f"{linked[0]} is a symbolic link (to {os.readlink(linked[0])}); nothing is written "
                         f"through links in a results folder: replace it with a real one or remove it{more}")
    check_locking(store.dir, trust_flock)
    store.record_sweep(sweep.source, provenance.git_commit(), sweep.executor, [r.run_id for r in sweep.runs],
                       planned_at or config.SPEC_VERSION)
    for spec, action in plan:
        if action == "rerun":  # keep the old result: move it aside, never delete it
            aside = store.aside_dir() / f"{spec.run_id}-{int(time.time())}"
            aside.parent.mkdir(exist_ok=True)
            shutil.move(str(store.run_dir(spec.run_id)), str(aside))
        elif "corrupt" in action:
            store.set_aside_corrupt(spec.run_id)

    def ready(spec: RunSpec) -> None:
        store.prepare(spec.run_id, spec.spec, spec.settings)
        store.cancel_path(spec.run_id).unlink(missing_ok=True)  # an old `harness cancel` must not stop it

    each_run(ready, todo)


def execute(backend, store: Store, todo: list[RunSpec], executor: dict,
            follow: list[RunSpec] = ()) -> dict[str, str]:
    """Submit the runs to the backend and wait for them, and for the runs to `follow` (a detached backend's):
    {run id: final state}. Raises Stopped on Ctrl-C, SIGTERM or SIGHUP, and the backend's BackendUnavailable."""
    if not todo and not follow:
        return {}
    received: list[int] = []
    try:
        with signals_interrupt(received):
            handle = backend.submit(store, todo, executor, follow) if follow else backend.submit(store, todo, executor)
            return backend.wait(handle)
    except KeyboardInterrupt:
        raise Stopped(received[0] if received else signal.SIGINT) from None


@contextlib.contextmanager
def signals_interrupt(received: list[int]):
    """SIGTERM and SIGHUP (a batch system, `timeout`, a dropped ssh session) stop the sweep as Ctrl-C
    does: running runs write a checkpoint. The signal's number goes into `received`."""
    def interrupt(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def outcome(store: Store, plan: list[tuple[RunSpec, str]], final: dict[str, str]) -> int:
    """Exit code 1 and one line per cell when a selected cell failed, crashed or is corrupt (the runs'
    final states, and the failed ones the plan skipped); else 0."""
    bad = [(spec, "failed" if action.startswith("skip (failed") else final.get(spec.run_id))
           for spec, action in plan]
    bad = [(spec, state) for spec, state in bad if state in ("failed", "crashed", "corrupt")]
    if not bad:
        return 0
    print(f"\n{len(bad)} of {len(plan)} selected cell(s) failed or crashed:", file=sys.stderr)
    for spec, state in bad:
        status = store.status(spec.run_id)
        where = f"  (traceback: {store.run_dir(spec.run_id) / 'error.txt'})" if state == "failed" else ""
        print(f"  {state} {spec.run_id} {settings_text(spec.settings)}: {status.get('error')}{where}", file=sys.stderr)
    return 1


def summary(store: Store, final: dict[str, str], start: float, smoke_sweep: bool) -> str:
    """After the runs: a smoke sweep's checkpoints removed; the final states counted, and the sweep's report."""
    from . import report

    parts = []
    if smoke_sweep:
        freed = smoke.drop_checkpoints(store, [rid for rid, state in final.items() if state == "done"])
        parts.append(f"smoke: removed the finished runs' checkpoints ({freed / 2**30:.1f} GiB)")
    counts = {s: list(final.values()).count(s) for s in dict.fromkeys(final.values())}
    parts.append(f"\n{len(final)} run(s) in {time.time() - start:.0f}s: "
                 + ", ".join(f"{n} {s}" for s, n in counts.items()) if final else "\nnothing to run")
    frame = report.load_runs([store.dir])
    if not frame.empty:
        agg = report.aggregate(frame)
        parts.append("\n" + report.render(agg, "md", report.caption(frame, agg)))
        sizes = smoke.sizes_against_paper(frame, report.load_references().get("paper", [])) if smoke_sweep else ""
        if sizes:  # the check that the cells are the paper's models, before a cluster trains them
            parts.append("\n" + sizes)
    return "\n".join(parts)
