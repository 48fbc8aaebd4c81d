"""What SLURM says about job ids: squeue for the live ones, sacct for how the
others ended, scancel. Used by the SLURM backend (for the run store: is a
SLURM claim's job still alive? for `harness cancel`: scancel); needs no submitit.

A job id is submitit's: "123" for a single job, "123_4" for an array task.
"""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import time

from . import BackendUnavailable

# squeue lists finished jobs for a while (MinJobAge) in one of these states
TERMINAL = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"}
CACHE_S = 3.0
_cache: dict[str, tuple[float, str | None]] = {}  # job id -> (when asked, squeue state or None = not listed)


class SlurmUnavailable(BackendUnavailable):
    """No SLURM client here, or its controller does not answer."""


def _call(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    if shutil.which(args[0]) is None:
        raise SlurmUnavailable(f"`{args[0]}` is not on PATH")
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"`{' '.join(args[:2])} ...` did not answer in {timeout:.0f} s") from None


def squeue(job_ids: list[str]) -> dict[str, str]:
    """{job id: state} of the ids squeue still lists (array tasks one by one). It is asked about their arrays,
    not each task, so a sweep of any size is one call."""
    asked, found = set(job_ids), {}
    arrays = sorted({job.split("_")[0] for job in job_ids})
    for start in range(0, len(arrays), 500):
        chunk = arrays[start:start + 500]
        out = _call(["squeue", "-h", "-r", "-o", "%i|%T", f"--jobs={','.join(chunk)}"])
        if out.returncode != 0:
            if "Invalid job id" in out.stderr:  # none of them is known any more
                continue
            raise SlurmUnavailable(f"squeue failed: {out.stderr.strip()}")
        for line in out.stdout.splitlines():
            job, _, state = line.partition("|")
            if job.strip() in asked:
                found[job.strip()] = state.strip()
    return found


def prefetch(job_ids) -> None:
    """Ask squeue once about many jobs; `alive` then answers from the cache."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return
    try:
        states = squeue(ids)
    except SlurmUnavailable:
        now = time.monotonic()
        _cache.update({job: (now, "UNANSWERED") for job in ids})  # see `alive`
        raise
    now = time.monotonic()
    for job in ids:
        _cache[job] = (now, states.get(job))


def alive_many(job_ids) -> list[bool | None]:
    """`alive` of each job (None for no id), with at most one squeue call for the
    ids not asked in the last CACHE_S seconds."""
    ids = [str(j) if j else None for j in job_ids]
    now = time.monotonic()
    ask = sorted({j for j in ids if j and (j not in _cache or now - _cache[j][0] > CACHE_S)})
    unknown: set[str] = set()
    if ask:
        if shutil.which("squeue") is None:
            unknown = set(ask)
        else:
            with contextlib.suppress(SlurmUnavailable):
                prefetch(ask)
    return [None if j is None or j in unknown else (_cache[j][1] is not None and _cache[j][1] not in TERMINAL)
            for j in ids]


def alive(job_id: str) -> bool | None:
    """True while the job is pending, running or requeued. None when there is no SLURM
    client here (the caller falls back to heartbeats). When squeue does not answer,
    True: a job that cannot be seen is not taken for dead (it would be submitted twice)."""
    return alive_many([job_id])[0]


def end_states(job_ids) -> dict[str, str]:
    """{job id: final state} from sacct (e.g. OUT_OF_MEMORY, NODE_FAIL); {} without accounting."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return {}
    try:
        out = _call(["sacct", "-n", "-X", "-P", "-o", "JobID,State", f"--jobs={','.join(ids)}"])
    except SlurmUnavailable:
        return {}
    states = {}
    for line in out.stdout.splitlines():
        job, _, state = line.partition("|")
        states[job.strip()] = state.split()[0] if state.strip() else "UNKNOWN"  # "CANCELLED by 0"
    return {job: states[job] for job in ids if job in states}


def cancel(job_ids, pending_only: bool = False) -> set[str]:
    """scancel the jobs that squeue still lists; `pending_only`: only those that have
    not started. Returns the ids it scancelled."""
    ids = sorted({str(j) for j in job_ids if j})
    listed = squeue(ids) if ids else {}
    asked = set(ids)
    chosen = sorted(job for job, state in listed.items() if job in asked
                    and state not in TERMINAL and (state == "PENDING" or not pending_only))
    if not chosen:
        return set()
    out = _call(["scancel", *(["--state=PENDING"] if pending_only else []), *chosen])
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        raise SlurmUnavailable(f"scancel failed: {out.stderr.strip()}")
    for job in chosen:
        _cache.pop(job, None)
    return set(chosen)
