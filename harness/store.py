"""The run store: results/<sweep>/<run_id>/ on disk, the only source of truth.

A run folder holds spec.yaml, status.json, train.log, checkpoints/ and, when
done, metrics.json (done means metrics.json exists). A run is claimed before
it starts: `claim` is created exclusively and its mtime is the heartbeat; a
claim whose owner is gone (same host, dead pid) or whose heartbeat is older
than `stale_after` seconds counts as crashed and may be taken over. A claim
names its backend ({"backend": NAME, ...}), which is asked first
(harness.backends: e.g. a SLURM job's claim lives as long as squeue lists the
job, heartbeat or not); pid and heartbeat decide when it cannot tell.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
from pathlib import Path

from protoseg import config
from protoseg.io import atomic_write_json, atomic_write_text, atomic_write_yaml, read_yaml

from . import backends

STATES = ("pending", "queued", "running", "done", "failed", "cancelled", "crashed", "corrupt")
ACTIVE = ("queued", "running")
SWEEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class StoreError(ValueError):
    """A results folder the harness cannot use; the message says why and what to do."""


def check_sweep_name(name: str, where: str = "sweep name") -> str:
    """A sweep name stays inside the results folder: letters, digits, '-' and '_'."""
    if not isinstance(name, str) or not SWEEP_NAME.match(name):
        raise StoreError(f"{where} {name!r} must be letters, digits, '-' or '_' (a folder directly under --results)")
    return name


def read_json(path: Path) -> dict | None:
    """A JSON object file's content, or None when it is missing, half-written or garbled."""
    try:
        value = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):  # JSONDecodeError, UnicodeDecodeError
        return None
    return value if isinstance(value, dict) else None


def read_metrics(path: Path) -> dict | None:
    """A metrics file (metrics.json, eval-*.json) that reads whole, with its mIoU; else None."""
    metrics = read_json(path)
    return metrics if metrics is not None and "mIoU" in metrics else None


def check_locking(folder: Path) -> None:
    """The harness's claims need flock; some NFS and Lustre mounts do not give it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    try:
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except BlockingIOError:
        return  # held by another harness right now: locking works
    except OSError as err:
        raise StoreError(f"{folder}: file locking (flock) does not work on this filesystem ({err.strerror}); "
                         f"two harnesses could run the same run twice. Use a --results folder on a local disk "
                         f"or a filesystem with flock (NFS: a running lockd, no 'nolock'; Lustre: mount "
                         f"-o flock)") from None


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
        self.sweep = check_sweep_name(sweep)
        self.dir = self.root / sweep

    # ---- layout -------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.dir / run_id

    def run_ids(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(e.name for e in os.scandir(self.dir) if e.is_dir() and not e.name.startswith("."))

    def spec_version(self) -> int | None:
        """The spec version this sweep was first planned at (1 before versions were recorded); None if new."""
        info = read_json(self.dir / "sweep.json")
        if info is None:
            return 1 if self.run_ids() else None
        return int(info.get("spec_version", 1))

    def record_sweep(self, source: str, commit: str | None, executor: dict, run_ids: list[str],
                     spec_version: int = config.SPEC_VERSION) -> None:
        """sweep.json: where the sweep came from, its spec version and each code commit that ran it."""
        path = self.dir / "sweep.json"
        with self._lock(""):  # the sweep folder's own lock
            info = read_json(path) or {"name": self.sweep, "created": time.time(), "invocations": [],
                                       "spec_version": spec_version}
            info["source"] = str(Path(source).resolve()) if source else None
            info["invocations"].append({"time": time.time(), "commit": commit, "executor": executor,
                                        "runs": len(run_ids), "host": socket.gethostname()})
            info["run_ids"] = sorted(set(info.get("run_ids", [])) | set(run_ids))
            atomic_write_json(path, info)

    def prepare(self, run_id: str, spec: dict, settings: dict) -> None:
        """Before an attempt: spec.yaml from the current experiment (its resource fields, e.g.
        train.device, may have changed; the rest is what the run id says), a pending status once."""
        folder = self.run_dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(folder / "spec.yaml", spec)
        if not (folder / "status.json").exists():
            atomic_write_json(folder / "status.json", {
                "run_id": run_id, "state": "pending", "attempts": 0, "settings": settings,
                "created": time.time()})

    def corrupt_files(self, run_id: str) -> list[str]:
        """The run's metrics.json / status.json that exist but do not read as what they should be."""
        bad = []
        for name in ("metrics.json", "status.json"):
            path = self.run_dir(run_id) / name
            content = read_metrics(path) if name == "metrics.json" else read_json(path)
            if content is None and path.exists():
                bad.append(name)
        return bad

    def set_aside_corrupt(self, run_id: str) -> list[Path]:
        """Move corrupt files to NAME.corrupt-TIME (kept for a look), so the run can be evaluated or run again."""
        moved = []
        for name in self.corrupt_files(run_id):
            path = self.run_dir(run_id) / name
            aside = path.with_name(f"{name}.corrupt-{int(time.time())}")
            os.replace(path, aside)
            moved.append(aside)
        return moved

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
        """Done means a metrics.json that reads, with its mIoU."""
        return read_metrics(self.run_dir(run_id) / "metrics.json") is not None

    def state(self, run_id: str, stale_after: float = 120, status: dict | None = None) -> str:
        """done / queued / running / failed / cancelled / crashed / corrupt / pending, from the files on disk."""
        if self.is_done(run_id):
            return "done"
        if self.corrupt_files(run_id):
            return "corrupt"
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
        asked = getattr(self, "_asked", {}).get(run_id)  # rows() asked each backend once for all its runs
        alive = asked[1] if asked and asked[0] == info else backends.alive([info])[0]
        if alive is not None:  # the backend knows (a SLURM job in squeue); None: heartbeat and pid decide
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
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
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
        claims = {rid: claim for rid, s in statuses.items() if s.get("state") in ACTIVE
                  and (claim := self.claim_info(rid))}
        self._asked = {rid: (claim, alive)  # one call per backend (one squeue), not one per run
                       for (rid, claim), alive in zip(claims.items(), backends.alive(list(claims.values())))}
        try:
            for rid, status in statuses.items():
                folder = self.run_dir(rid)
                status["run_id"] = rid
                status["state"] = self.state(rid, stale_after, status)
                if status["state"] == "running":
                    status["progress"] = read_json(folder / "progress.json")
                out.append(status)
        finally:
            self._asked = {}
        return out


def load_spec(run_dir: Path) -> dict:
    return read_yaml(Path(run_dir) / "spec.yaml", "run spec", StoreError)
