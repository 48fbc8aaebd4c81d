"""Local backend: a pool of worker processes on this machine (`harness.worker`).

Each run is a process of its own (its memory and thread count are its own, and a crash takes only it),
forked from a forkserver that has imported the engine once: a fresh interpreter per run would spend
seconds importing torch, timm and mmcv again."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

from protoseg.io import open_append

from ..progress import RunBar
from ..store import LostClaim, Store, owner, pid_alive
from ..worker import LOST
from . import Setting

if TYPE_CHECKING:
    from ..matrix import RunSpec

SETTINGS: dict[str, Setting] = {}  # only the common ones: backend, jobs, stale_after
DETACHED = False  # the workers die with the harness (see _die_with)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# what every run imports: timm (backbones import it when they build), torch._inductor.config
# (torch.use_deterministic_algorithms imports it, 1.5 s a run on a 2-core machine)
PRELOAD = ["harness.backends.forkserver_setup", "harness.backends.local", "harness.worker", "protoseg.engine",
           "timm", "torch._inductor.config"]


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _die_with(pid: int) -> None:
    """SIGKILL this process when process `pid` (the harness) exits, as PR_SET_PDEATHSIG would if the
    harness were our parent: the forkserver between us lives on while its children do."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)
    except (OSError, AttributeError):  # no pidfd (Linux < 5.3, a seccomp filter): poll instead
        handle = None

    def watch() -> None:
        if handle is not None:
            select.select([handle], [], [])  # readable once `pid` has exited
        else:
            while pid_alive(pid):
                time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="die with the harness").start()


def _worker(folder: str, threads: int, harness_pid: int, token: str) -> None:
    """The child: its output to the run's worker.log, then the run, as `python -m harness.worker` would
    run it, but tied to the harness by _die_with (its parent is the forkserver)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):  # ignored by the forkserver; a stop must not be lost
        signal.signal(sig, signal.SIG_DFL)
    with open_append(os.path.join(folder, "worker.log")) as log:
        for fd in (1, 2):
            os.dup2(log.fileno(), fd)
    _die_with(harness_pid)
    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    from .. import worker

    sys.exit(worker.run_here(folder, threads, token=token))


def _launch(store: Store, rid: str, threads: int, token: str) -> multiprocessing.Process:
    proc = _context().Process(target=_worker, args=(str(store.run_dir(rid)), threads, os.getpid(), token), name=rid)
    proc.start()
    return proc


def _stop_all(active: dict[str, multiprocessing.Process], grace: float = 60.0) -> None:
    """SIGTERM makes each worker checkpoint and exit; whatever is left after `grace` is killed. The wait
    watches the pids, not the forkserver's pipe: once the forkserver has died (kill -9), that pipe is
    closed and a join would return while the runs are still writing their stop checkpoints."""
    def signal_all(sig: int) -> None:  # os.kill: Process.terminate() does nothing once its pipe says 255
        for proc in active.values():
            with contextlib.suppress(ProcessLookupError):
                if pid_alive(proc.pid):
                    os.kill(proc.pid, sig)

    signal_all(signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and any(pid_alive(proc.pid) for proc in active.values()):
        time.sleep(0.1)
    signal_all(signal.SIGKILL)


class Pool:
    """The runs to execute on this machine, `jobs` at a time; wait() launches and polls them."""

    def __init__(self, store: Store, runs: list[RunSpec], executor: dict):
        self.store, self.runs, self.stale_after = store, list(runs), executor["stale_after"]
        self.jobs, self.threads = _sizes(len(self.runs), executor)


def _sizes(count: int, executor: dict) -> tuple[int, int]:
    """(runs at once, torch threads each) for `count` runs. The threads are cores // executor.jobs (jobs
    unset: one run per core, so 1), whatever `count` is: a cell rerun alone (`--only ID --force`) gets
    the threads the sweep gave it, and with them the same sums in the same order, so the same numbers.
    Only the runs at once are capped by `count`."""
    jobs = max(1, executor.get("jobs") or cores())
    return max(1, min(jobs, count or 1)), max(1, cores() // jobs)


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
                who = owner(backend="local")
                if store.claim(spec.run_id, who, stale_after):
                    active[spec.run_id] = _launch(store, spec.run_id, threads, who["token"]), who["token"]
                else:
                    finish(spec.run_id, "done elsewhere" if store.is_done(spec.run_id) else "running elsewhere")
            for rid, (proc, token) in list(active.items()):
                code = proc.exitcode
                if code is None or (code == 255 and pid_alive(proc.pid)):  # 255: the forkserver died, not the run
                    continue
                proc.close()
                del active[rid]
                if code < 0:  # killed by a signal (OOM killer, kill -9): resumable, not failed
                    with contextlib.suppress(LostClaim):
                        store.update(rid, token, state="crashed", error=f"worker killed by signal {-code}")
                    store.release(rid, token)
                finish(rid, "taken over" if code == LOST else store.state(rid, stale_after))
            time.sleep(0.1)
    except BaseException as err:  # Ctrl-C, a signal, or a failure of the harness itself: no run is left behind
        if active:
            # a terminal that is gone (the SIGHUP of a dropped ssh session) must not keep the runs going
            with contextlib.suppress(OSError):
                bar.note(f"{'interrupted' if isinstance(err, KeyboardInterrupt) else type(err).__name__}: "
                         f"stopping {len(active)} running run(s) at a checkpoint...")
        _stop_all({rid: proc for rid, (proc, _) in active.items()})
        raise
    finally:
        with contextlib.suppress(OSError):
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
            f"a run without a heartbeat for {executor['stale_after']} s counts as crashed")


def resources(executor: dict) -> tuple[int, float | None]:
    return 1, None  # one process, as long as it takes
