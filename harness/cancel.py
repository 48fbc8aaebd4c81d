"""`harness cancel`: stop a sweep's queued and running runs, keeping their
checkpoints, so that `harness run` later resumes them."""
from __future__ import annotations

import time

from protoseg.io import atomic_write_text

from . import slurm_jobs
from .store import Store


def _record(store: Store, rid: str) -> None:
    store.update(rid, state="cancelled", error="cancelled by `harness cancel`", finished=time.time())
    store.release(rid)
    store.cancel_path(rid).unlink(missing_ok=True)


def cancel(store: Store, run_ids: list[str], grace: float = 60.0) -> dict[str, str]:
    """Every run gets a cancel file, which its worker (any backend) obeys at the
    next iteration by writing a checkpoint and stopping. SLURM jobs still in
    the queue are scancelled at once; running ones that have not stopped
    after `grace` seconds are scancelled too. Returns {run id: what happened}."""
    held = {rid: store.claim_info(rid) or {} for rid in run_ids}
    for rid in run_ids:
        atomic_write_text(store.cancel_path(rid), f"{time.time()}\n")
    jobs = {rid: info["job_id"] for rid, info in held.items() if info.get("backend") == "slurm" and info.get("job_id")}
    queued = [rid for rid in jobs if store.status(rid).get("state") == "queued"]
    slurm_jobs.cancel(jobs[rid] for rid in queued)
    running = [rid for rid in run_ids if rid not in queued]
    deadline = time.time() + grace
    while time.time() < deadline and any(store.claim_info(rid) for rid in running):
        time.sleep(0.5)
    stuck = [rid for rid in running if store.claim_info(rid)]
    slurm_jobs.cancel(jobs[rid] for rid in stuck if rid in jobs)
    outcome = {}
    for rid in run_ids:
        if rid in queued:
            _record(store, rid)
            outcome[rid] = f"SLURM job {jobs[rid]} scancelled in the queue"
        elif rid in stuck and rid in jobs:
            _record(store, rid)
            outcome[rid] = f"SLURM job {jobs[rid]} scancelled after {grace:.0f} s without stopping"
        elif rid in stuck:  # the cancel file stays: the worker stops when it reaches an iteration
            outcome[rid] = f"asked to stop; still running after {grace:.0f} s"
        else:
            store.cancel_path(rid).unlink(missing_ok=True)
            outcome[rid] = "stopped at a checkpoint"
    return outcome
