"""Local backend: a pool of worker processes on this machine."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from ..matrix import RunSpec
from ..store import Store, owner
from . import RunBar


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


def run(store: Store, runs: list[RunSpec], executor: dict, progress: bool = True) -> dict[str, str]:
    jobs = max(1, min(executor.get("jobs") or cores(), len(runs) or 1))
    threads = max(1, cores() // jobs)
    stale_after = executor.get("stale_after", 120)
    pending, active, final = list(runs), {}, {}
    bar = RunBar(store, runs, f"{store.sweep} ({jobs} at a time, {threads} thread(s) each)", progress)

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
