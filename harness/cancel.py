"""`harness cancel`: stop a sweep's queued and running runs, keeping their
checkpoints, so that `harness run` later resumes them."""
from __future__ import annotations

import time

from protoseg.io import atomic_write_text, refuse_link

from . import backends
from .store import STALE_AFTER, Store


def cancel(store: Store, run_ids: list[str], grace: float = 60.0, stale_after: float = STALE_AFTER) -> dict[str, str]:
    """Every run gets a cancel file, which its worker (any backend) obeys at the
    next iteration by writing a checkpoint and stopping. Each run's backend then
    stops what has not started at once (SLURM: scancel of pending jobs), and what
    is still busy after `grace` seconds. Returns {run id: what happened}; raises
    BackendUnavailable when a backend's cluster does not answer."""
    held = {rid: store.claim_info(rid) or {} for rid in run_ids}
    for rid in run_ids:
        refuse_link(store.run_dir(rid), "run folder")
        atomic_write_text(store.cancel_path(rid), f"{time.time()}\n")
    # a run that started meanwhile gets its grace
    queued = dict(zip(held, backends.cancel(list(held.values()), pending_only=True)))

    def busy(rid: str) -> bool:
        return store.claim_info(rid) is not None and store.claim_alive(rid, stale_after)

    deadline = time.time() + grace
    while time.time() < deadline and any(busy(rid) for rid in run_ids):
        time.sleep(0.5)
    stuck = [rid for rid in run_ids if busy(rid)]
    late = dict(zip(stuck, backends.cancel([held[rid] for rid in stuck], pending_only=False)))
    outcome = {}
    for rid in run_ids:
        if store.is_done(rid):
            outcome[rid] = "finished before it could stop"
        elif queued[rid] and rid not in stuck:  # `harness run` may have recorded it cancelled meanwhile
            store.record_cancelled(rid)
            outcome[rid] = f"{queued[rid]} in the queue"
        elif store.status(rid).get("state") == "cancelled" and rid not in stuck:
            outcome[rid] = "stopped at a checkpoint"  # its worker recorded it
        elif rid in stuck and not late[rid]:  # the cancel file stays: it stops when it reaches an iteration
            outcome[rid] = f"asked to stop; still running after {grace:.0f} s"
        else:  # the cancel file stays, so a job that starts after all stops at once
            store.record_cancelled(rid)
            outcome[rid] = f"{late[rid]} after {grace:.0f} s without stopping" if rid in stuck else "cancelled"
    return outcome
