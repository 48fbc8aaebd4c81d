"""The run store: results/<sweep>/<run_id>/ on disk, the only source of truth.

A run folder holds spec.yaml, status.json, train.log, checkpoints/ and, when
done, metrics.json (done means metrics.json exists). A run is claimed before
it starts: `claim` is created exclusively and its mtime is the heartbeat; a
claim whose owner is gone (same host, dead pid) or whose heartbeat is older
than `stale_after` seconds counts as crashed and may be taken over. A claim
held by a SLURM job ({"backend": "slurm", "job_id": ...}) lives as long as
squeue lists the job as pending, running or requeued, heartbeat or not.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

import yaml

from protoseg.io import atomic_write_json, atomic_write_text, atomic_write_yaml

from . import slurm_jobs

STATES = ("pending", "queued", "running", "done", "failed", "cancelled", "crashed")
ACTIVE = ("queued", "running")


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is missing or half-written."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def pid_alive(pid: int) -> bool:
    """True for a running process; a zombie (dead, not yet reaped) is not alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def owner(**extra) -> dict:
    """Who is claiming: this host and process, plus backend details."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), **extra}


class Store:
    def __init__(self, root: str | Path, sweep: str):
        self.root = Path(root).resolve()
        self.sweep = sweep
        self.dir = self.root / sweep

    # ---- layout -------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.dir / run_id

    def run_ids(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(e.name for e in os.scandir(self.dir) if e.is_dir() and not e.name.startswith("."))

    def record_sweep(self, source: str, commit: str | None, executor: dict, run_ids: list[str]) -> None:
        """sweep.json: where the sweep came from and each code commit that ran it."""
        path = self.dir / "sweep.json"
        with self._lock(""):  # the sweep folder's own lock
            info = read_json(path) or {"name": self.sweep, "created": time.time(), "invocations": []}
            info["source"] = str(Path(source).resolve()) if source else None
            info["invocations"].append({"time": time.time(), "commit": commit, "executor": executor,
                                        "runs": len(run_ids), "host": socket.gethostname()})
            info["run_ids"] = sorted(set(info.get("run_ids", [])) | set(run_ids))
            atomic_write_json(path, info)

    def prepare(self, run_id: str, spec: dict, settings: dict) -> None:
        """Create the run folder with spec.yaml and a pending status, once."""
        folder = self.run_dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "spec.yaml").exists():
            atomic_write_yaml(folder / "spec.yaml", spec)
        if not (folder / "status.json").exists():
            atomic_write_json(folder / "status.json", {
                "run_id": run_id, "state": "pending", "attempts": 0, "settings": settings,
                "created": time.time()})

    # ---- status -------------------------------------------------------
    def status(self, run_id: str) -> dict:
        return read_json(self.run_dir(run_id) / "status.json") or {"run_id": run_id, "state": "pending"}

    def update(self, run_id: str, **fields) -> dict:
        """Read-modify-write status.json (atomic replace)."""
        with self._lock(run_id):
            return self._merge_status(run_id, fields)

    def _merge_status(self, run_id: str, fields: dict) -> dict:
        status = {**self.status(run_id), **fields, "updated": time.time()}
        atomic_write_json(self.run_dir(run_id) / "status.json", status)
        return status

    def is_done(self, run_id: str) -> bool:
        return (self.run_dir(run_id) / "metrics.json").exists()

    def state(self, run_id: str, stale_after: float = 120, status: dict | None = None) -> str:
        """done / queued / running / failed / cancelled / crashed / pending, from the files on disk."""
        if self.is_done(run_id):
            return "done"
        state = (status or self.status(run_id)).get("state", "pending")
        if state in ACTIVE or self._claim_path(run_id).exists():
            if not self.claim_alive(run_id, stale_after):
                return "crashed"
            return state if state in ACTIVE else "running"
        return "pending" if state == "done" else state  # status said done but metrics.json is gone

    def cancel_path(self, run_id: str) -> Path:
        """A file that asks the run's worker, wherever it runs, to stop at a checkpoint."""
        return self.run_dir(run_id) / "cancel"

    def has_checkpoint(self, run_id: str) -> bool:
        return any((self.run_dir(run_id) / "checkpoints").glob("iter_*.pt"))

    def record_cancelled(self, run_id: str) -> None:
        """`harness cancel` stopped the run (its checkpoint stays); the claim is let go."""
        self.update(run_id, state="cancelled", error="cancelled by `harness cancel`", finished=time.time())
        self.release(run_id)

    def write_error(self, run_id: str, summary: str, trace: str) -> None:
        atomic_write_text(self.run_dir(run_id) / "error.txt", trace)
        self.update(run_id, state="failed", error=summary, finished=time.time())

    # ---- claims -------------------------------------------------------
    def _claim_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "claim"

    @contextlib.contextmanager
    def _lock(self, run_id: str):
        """Serialises claim and status changes of one run across processes."""
        path = self.run_dir(run_id) / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def claim_info(self, run_id: str) -> dict | None:
        return read_json(self._claim_path(run_id))

    def claim_alive(self, run_id: str, stale_after: float) -> bool:
        path = self._claim_path(run_id)
        info = read_json(path)
        if info is None:
            return False
        if info.get("backend") == "slurm" and info.get("job_id"):
            alive = slurm_jobs.alive(info["job_id"])
            if alive is not None:
                return alive
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return False
        if info.get("host") == socket.gethostname() and info.get("pid") and not pid_alive(info["pid"]):
            return False
        return age < stale_after

    def claim(self, run_id: str, who: dict, stale_after: float = 120) -> bool:
        """Take the run for `who`; False when it is done or a live owner holds it.
        A stale claim is taken over."""
        with self._lock(run_id):
            if self.is_done(run_id):  # finished by someone else since it was planned
                return False
            path = self._claim_path(run_id)
            if path.exists():
                if self.claim_alive(run_id, stale_after):
                    return False
                path.unlink()
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as handle:
                json.dump(who, handle)
            return True

    def hand_to_job(self, run_id: str, submitter: dict, job: dict, **fields) -> None:
        """After sbatch: the submitter's claim becomes the job's and the run is "queued".
        If this job has started already (and taken the claim), only its fields are
        recorded; if another job holds the run, nothing (this job will leave it)."""
        with self._lock(run_id):
            held = read_json(self._claim_path(run_id)) or {}
            if held.get("pid") == submitter["pid"] and held.get("host") == submitter["host"]:
                atomic_write_text(self._claim_path(run_id), json.dumps(job))
                self._merge_status(run_id, {**fields, "state": "queued"})
            elif held.get("job_id") == job["job_id"]:
                self._merge_status(run_id, fields)

    def take_for_job(self, run_id: str, who: dict, stale_after: float = 120) -> bool:
        """A starting SLURM job takes its run, unless the run is done or another live job holds it."""
        with self._lock(run_id):
            if self.is_done(run_id):
                return False
            held = read_json(self._claim_path(run_id)) or {}
            if held.get("job_id") not in (None, who["job_id"]) and self.claim_alive(run_id, stale_after):
                return False
            atomic_write_text(self._claim_path(run_id), json.dumps(who))
            return True

    def retake(self, run_id: str, who: dict) -> None:
        """The claim's owner hands it to another process (e.g. the worker it started)."""
        atomic_write_text(self._claim_path(run_id), json.dumps(who))

    def heartbeat(self, run_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self._claim_path(run_id))

    def release(self, run_id: str) -> None:
        with self._lock(run_id):
            self._claim_path(run_id).unlink(missing_ok=True)

    # ---- reading many runs fast (status, report) -----------------------
    def rows(self, stale_after: float = 120) -> list[dict]:
        """One dict per run: status.json fields, the derived state and, while running, progress."""
        out, statuses = [], {rid: read_json(self.run_dir(rid) / "status.json") or {} for rid in self.run_ids()}
        jobs = [s.get("job_id") for s in statuses.values() if s.get("backend") == "slurm" and s.get("state") in ACTIVE]
        if jobs:
            with contextlib.suppress(slurm_jobs.SlurmUnavailable):
                slurm_jobs.prefetch(jobs)  # one squeue call, not one per run
        for rid, status in statuses.items():
            folder = self.run_dir(rid)
            status["run_id"] = rid
            status["state"] = self.state(rid, stale_after, status)
            if status["state"] == "running":
                status["progress"] = read_json(folder / "progress.json")
            out.append(status)
        return out


def load_spec(run_dir: Path) -> dict:
    return yaml.safe_load((Path(run_dir) / "spec.yaml").read_text())
