"""Local backend: a pool of worker processes on this machine (`harness.worker`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from ..matrix import RunSpec
from ..store import Store, owner
from . import RunBar, Setting

SETTINGS: dict[str, Setting] = {}  # only the common ones: backend, jobs, stale_after
DETACHED = False  # the workers die with the harness (PR_SET_PDEATHSIG)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _launch(store: Store, rid: str, threads: int) -> subprocess.Popen:
    folder = store.run_dir(rid)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(folder / "worker.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "harness.worker", str(folder), "--threads", str(threads)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def _stop_all(active: dict[str, subprocess.Popen], grace: float = 60.0) -> None:
    """SIGTERM makes each worker checkpoint and exit; whatever is left after `grace` is killed."""
    for proc in active.values():
        proc.send_signal(signal.SIGTERM)
    deadline = time.time() + grace
    for proc in active.values():
        try:
            proc.wait(max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()


class Pool:
    """The runs to execute on this machine, `jobs` at a time; wait() launches and polls them."""

    def __init__(self, store: Store, runs: list[RunSpec], executor: dict):
        self.store, self.runs, self.stale_after = store, list(runs), executor.get("stale_after", 120)
        self.jobs, self.threads = _sizes(len(self.runs), executor)


def _sizes(count: int, executor: dict) -> tuple[int, int]:
    """(runs at once, torch threads each)."""
    jobs = max(1, min(executor.get("jobs") or cores(), count or 1))
    return jobs, max(1, cores() // jobs)


def submit(store: Store, runs: list[RunSpec], executor: dict) -> Pool:
    return Pool(store, runs, executor)


def wait(handle: Pool, progress: bool = True) -> dict[str, str]:
    store, stale_after, jobs, threads = handle.store, handle.stale_after, handle.jobs, handle.threads
    pending, active, final = list(handle.runs), {}, {}
    bar = RunBar(store, handle.runs, f"{store.sweep} ({jobs} at a time, {threads} thread(s) each)", progress)

    def finish(rid: str, state: str) -> None:
        final[rid] = state
        bar.finish(rid, state, running=len(active))

    try:
        while pending or active:
            while pending and len(active) < jobs:
                spec = pending.pop(0)
                if store.claim(spec.run_id, owner(backend="local"), stale_after):
                    active[spec.run_id] = _launch(store, spec.run_id, threads)
                else:
                    finish(spec.run_id, "done elsewhere" if store.is_done(spec.run_id) else "running elsewhere")
            for rid, proc in list(active.items()):
                code = proc.poll()
                if code is None:
                    continue
                del active[rid]
                if code < 0:  # killed by a signal (OOM killer, kill -9): resumable, not failed
                    store.update(rid, state="crashed", error=f"worker killed by signal {-code}")
                    store.release(rid)
                finish(rid, store.state(rid, stale_after))
            time.sleep(0.1)
    except KeyboardInterrupt:
        bar.note(f"interrupted: stopping {len(active)} running run(s) at a checkpoint...")
        _stop_all(active)
        raise
    finally:
        bar.close()
    return final


def run(store: Store, runs: list[RunSpec], executor: dict, progress: bool = True) -> dict[str, str]:
    return wait(submit(store, runs, executor), progress)


def alive(claims: list[dict]) -> list[bool | None]:
    return [None] * len(claims)  # the store judges a local worker by its pid and heartbeat


def cancel(claims: list[dict], pending_only: bool) -> list[str | None]:
    return [None] * len(claims)  # the worker obeys the cancel file; nothing is queued


def describe(store: Store, runs: list[RunSpec], executor: dict) -> str:
    jobs, threads = _sizes(len(runs), executor)
    return (f"local: {jobs} run(s) at a time on this machine ({cores()} cores), {threads} torch thread(s) each; "
            f"a run without a heartbeat for {executor.get('stale_after', 120)} s counts as crashed")
