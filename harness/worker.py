"""Executes one run of the store: the part every backend runs on its worker.

    python -m harness.worker RESULTS/SWEEP/RUN_ID [--threads N]

Takes over the claim its backend made for it (or claims the run, run by
hand), keeps its heartbeat, calls protoseg.engine.run, and records done /
failed (with the traceback in error.txt) / cancelled. The run stops at a
checkpoint when `stop` is set or when `harness cancel` leaves a cancel file
in the run folder; it stops without writing anything once another process
has taken the run over (the claim's fencing token changed).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from . import backends
from .labels import settings_text
from .store import DISK_FULL, Liveness, LostClaim, Store, cannot_tell, load_spec, owner

HEARTBEAT_S = 5.0


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the process that started us dies, so a killed
    `harness run` leaves no orphan training behind (the run resumes later)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def store_of(run_dir: Path, liveness: Liveness = cannot_tell) -> tuple[Store, str]:
    run_dir = Path(run_dir).resolve()
    return Store(run_dir.parent.parent, run_dir.parent.name, liveness), run_dir.name


def board_dir(store: Store, rid: str) -> Path:
    """Where a run's TensorBoard events go: named by its settings, so `tensorboard --logdir
    results/<sweep>` tells the runs apart ('head=parametric seed=0 (e630d51a9ce1)')."""
    label = settings_text(store.status(rid).get("settings") or {}).replace("/", "_")
    return store.board_dir(f"{label} ({rid})" if label else rid)


LOST = 75  # exit code of a worker whose run was taken over (EX_TEMPFAIL): it wrote nothing more


def execute(run_dir: str | Path, backend: str = "local", job_id: str | None = None,
            stop: threading.Event | None = None, requeue: threading.Event | None = None,
            token: str | None = None) -> int:
    """Run one stored run to the end. Returns 0 done, 1 failed, 143 interrupted, LOST taken over.

    `token`: the fencing token of the claim this worker was started for (None: claim the run here).
    Every write to the run checks that the claim still has it; once it does not (another process
    took the run over, e.g. after this one was suspended past stale_after on another host) the
    worker stops and writes nothing more. When `requeue` is set at the stop, the run goes back to
    "queued" and its claim to the (SLURM) job `job_id`, which will start it again."""
    from protoseg import engine

    store, rid = store_of(run_dir, backends.alive)  # run by hand, it claims the run: its backend is asked
    who = owner(backend=backend, job_id=job_id)
    if token is None:
        if not store.claim(rid, who):
            print(f"{store.run_dir(rid)}: done, or held by a live owner; nothing to do", file=sys.stderr)
            return 0 if store.is_done(rid) else LOST
        token = who["token"]
    try:
        return _execute(store, rid, who, token, stop or threading.Event(), requeue, engine)
    except LostClaim as err:
        print(err, file=sys.stderr)
        return LOST


def _execute(store: Store, rid: str, who: dict, token: str, stop: threading.Event,
             requeue: threading.Event | None, engine) -> int:
    from protoseg.phases import Interrupted

    store.retake(rid, who, token)
    if store.is_done(rid):  # last guard: a done run is never trained again
        store.release(rid, token)
        return 0
    cancel = store.cancel_path(rid)
    if cancel.exists():  # cancelled while it waited in a queue
        _record_cancel(store, rid, token)
        return 143
    attempts = int(store.status(rid).get("attempts", 0)) + 1
    store.update(rid, token, state="running", attempts=attempts, started=time.time(), host=who["host"],
                 pid=who["pid"], backend=who["backend"], job_id=who["job_id"], error=None,
                 resumed=store.has_checkpoint(rid))
    beating, lost = threading.Event(), threading.Event()

    def beat():
        while not beating.wait(HEARTBEAT_S):
            try:
                held = store.heartbeat(rid, token)
            except Exception as err:  # a passing filesystem error (ESTALE, EIO) must not end the heartbeat
                logging.getLogger(__name__).warning("heartbeat of %s failed, trying again: %s", rid, err)
                continue
            if not held:
                lost.set()
                return

    threading.Thread(target=beat, daemon=True).start()
    try:
        metrics = engine.run(load_spec(store.run_dir(rid)), store.run_dir(rid),
                             stop=lambda: stop.is_set() or lost.is_set() or cancel.exists(),
                             board_dir=board_dir(store, rid), guard=store.guard(rid, token),
                             complexity_cache=store.complexity_cache())
        store.update(rid, token, state="done", mIoU=metrics["mIoU"], finished=time.time(), error=None)
        return 0
    except Interrupted as err:
        if lost.is_set():
            raise LostClaim(f"{store.run_dir(rid)}: another process took this run over; stopped") from None
        if cancel.exists():
            _record_cancel(store, rid, token)
        elif requeue is not None and requeue.is_set():
            store.update(rid, token, state="queued", error=None, requeued=time.time())
            store.retake(rid, {**who, "pid": None}, token)
            return 143
        else:
            store.update(rid, token, state="cancelled", error=str(err), finished=time.time())
        return 143
    except LostClaim:
        raise
    except Exception as err:  # any failure of the run is recorded, never raised further
        crash = _not_the_runs_fault(err, store.run_dir(rid))
        if crash:  # it resumes from its last checkpoint when run again, no --retry-failed
            with contextlib.suppress(OSError):  # on a full disk the record may not fit: a released claim reads crashed
                store.update(rid, token, state="crashed", finished=time.time(), error=crash)
            return 1
        store.write_error(rid, f"{type(err).__name__}: {err}", traceback.format_exc(), token)
        return 1
    finally:
        beating.set()
        if store.status(rid).get("state") != "queued":
            store.release(rid, token)


def _not_the_runs_fault(err: Exception, run_dir: Path) -> str | None:
    """Why the run ended through no fault of its own (a full disk, a lost DDP peer), or None."""
    from protoseg import distributed

    if isinstance(err, OSError) and err.errno in DISK_FULL:
        return (f"{err.strerror} writing {err.filename or run_dir}: the results filesystem is full; free space "
                f"and run the same command to resume the run")
    if distributed.lost_peer(err):
        return (f"another process of this DDP run is gone (its task was killed or its node lost: {err}); run the "
                f"same command to resume the run from its checkpoint")
    return None


def _record_cancel(store: Store, rid: str, token: str) -> None:
    store.record_cancelled(rid, token)
    store.cancel_path(rid).unlink(missing_ok=True)  # obeyed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.worker")
    parser.add_argument("run_dir")
    parser.add_argument("--threads", type=int, help="torch CPU threads for this run")
    parser.add_argument("--backend", default="local")
    args = parser.parse_args(argv)
    _die_with_parent()
    return run_here(args.run_dir, args.threads, args.backend)


def run_here(run_dir: str | Path, threads: int | None = None, backend: str = "local",
             token: str | None = None) -> int:
    """`execute` in this process, which SIGTERM, SIGINT, SIGUSR1 and SIGHUP stop at a checkpoint."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):  # SIGHUP: a dropped ssh session
        signal.signal(sig, lambda *_: stop.set())
    return execute(run_dir, backend=backend, stop=stop, token=token)


if __name__ == "__main__":
    sys.exit(main())
