"""The run store: results/<sweep>/<run_id>/ on disk, the only source of truth.

A run folder holds spec.yaml, status.json, train.log, checkpoints/ and, when
done, metrics.json (done means metrics.json exists). A run is claimed before
it starts: `claim` is created exclusively and its mtime is the heartbeat; a
claim whose owner is gone (same host, dead pid) or whose heartbeat is older
than `stale_after` seconds counts as crashed and may be taken over. A claim
names its backend ({"backend": NAME, ...}); the store's `liveness` asks the
backends first (the caller passes harness.backends.alive: e.g. a SLURM job's
claim lives as long as squeue lists the job, heartbeat or not); pid and
heartbeat decide when it cannot tell.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import json
import math
import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Callable

from protoseg import config, io
from protoseg.io import atomic_write_json, atomic_write_text, atomic_write_yaml, read_yaml, refuse_link

from . import mounts

BOARD, ASIDE, COMPLEXITY = ".tensorboard", ".replaced", ".complexity"
SWEEP_FOLDERS = (BOARD, ".slurm", ".ray", ASIDE, ".lock")  # the harness writes there
RUN_PATHS = ("checkpoints", "tensorboard", "train.log", "worker.log", ".lock")  # opened in place, not renamed over
STATES = ("pending", "queued", "running", "done", "failed", "cancelled", "crashed", "corrupt")
ACTIVE = ("queued", "running")
SWEEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
WRITERS = 16  # runs written at once by each_run
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # the filesystem's fault, not the run's
STALE_AFTER = 120  # seconds without a heartbeat before a claim counts as gone (executor.stale_after's default)
NOT_A_SWEEP = "paper"  # results/paper/ holds the papers' numbers (harness.report), not runs
# Is each claim's run still held, asked of its backend in one batch; None: cannot tell (pid and heartbeat decide)
Liveness = Callable[[list[dict]], list[bool | None]]


def cannot_tell(claims: list[dict]) -> list[bool | None]:
    """The liveness of a store that asks no backend: pid and heartbeat decide every claim."""
    return [None] * len(claims)


class StoreError(ValueError):
    """A results folder the harness cannot use; the message says why and what to do."""


class LostClaim(io.LostClaim):
    """This process's claim on a run was taken over (a new fencing token): it writes nothing more to it."""


def check_sweep_name(name: str, where: str = "sweep name") -> str:
    """A sweep name stays inside the results folder: letters, digits, '-' and '_'."""
    if not isinstance(name, str) or not SWEEP_NAME.match(name):
        raise StoreError(f"{where} {name!r} must be letters, digits, '-' or '_' (a folder directly under --results)")
    return name


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _records(v) -> bool:  # metrics' history and evals: [{iteration: N, ...}, ...]
    return isinstance(v, list) and all(isinstance(r, dict) and _integer(r.get("iteration")) for r in v)


def _optional(check):
    return lambda v: v is None or check(v)


_TIME = (_optional(_number), "a number or null")
_TEXT = (_optional(lambda v: isinstance(v, str)), "text or null")
# What the harness reads from each JSON file it writes: {field: (check, what is valid)}; a field in
# REQUIRED must be there. A file that parses but breaks these is corrupt, as a truncated one is.
SCHEMAS = {
    "metrics": {"mIoU": (lambda v: _number(v) and math.isfinite(v), "a finite number"),
                "spec": (lambda v: isinstance(v, dict), "a mapping"),
                "history": (_records, "a list of {iteration: N, ...}"),
                "evals": (_records, "a list of {iteration: N, ...}"),
                "num_classes": (_integer, "an integer"),
                "class_names": (lambda v: isinstance(v, list), "a list"),
                **{key: (_optional(_number), "a number or null") for key in (
                    "mAcc", "aAcc", "params_learnable", "params_learnable_with_aux", "params_total", "macs",
                    "flops", "train_time_s", "prototype_diversity", "prototypes_used", "inference_fps",
                    "train_img_s")}},
    "status": {"state": (lambda v: v in STATES, f"one of {', '.join(STATES)}"),
               "attempts": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
               "settings": (lambda v: isinstance(v, dict), "a mapping of axis values"),
               "mIoU": (_optional(_number), "a number or null"),
               "error": _TEXT, "log": _TEXT, "run_id": _TEXT,
               **{key: _TIME for key in ("created", "updated", "started", "finished", "requeued")}},
    "progress": {"iteration": (_integer, "an integer"), "iterations": (_integer, "an integer"),
                 "loss": (_number, "a number")},
    "sweep": {"spec_version": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
              "invocations": (lambda v: isinstance(v, list), "a list"),
              "run_ids": (lambda v: isinstance(v, list), "a list")},
    "claim": {"host": _TEXT, "backend": _TEXT, "token": _TEXT,
              "pid": (_optional(lambda v: _integer(v) and v > 0), "a process id or null"),
              "started": (_optional(_integer), "an integer or null")},
}
REQUIRED = {"metrics": ("mIoU",), "progress": ("iteration", "iterations", "loss")}


def _schema(path: Path) -> str | None:
    name = path.name
    if name == "metrics.json" or (name.startswith("eval-") and name.endswith(".json")):
        return "metrics"
    return name.removesuffix(".json") if name.removesuffix(".json") in SCHEMAS else None


def inspect_json(path: Path) -> tuple[dict | None, str | None]:
    """(content, None) for a JSON object file that holds what its schema says; (None, why not)
    for one that does not (garbled, half-written, a folder, wrong types); (None, None) when missing."""
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None, None
    except IsADirectoryError:
        return None, "a folder, not a file"
    except OSError as err:
        return None, f"unreadable ({err.strerror})"
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        return None, f"not whole JSON ({str(err).splitlines()[0][:80]})"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    schema = _schema(path)
    for key, (check, valid) in SCHEMAS.get(schema, {}).items():
        if key not in value:
            if key in REQUIRED.get(schema, ()):
                return None, f"no '{key}'"
        elif not check(value[key]):
            return None, f"'{key}' is {value[key]!r:.40}, not {valid}"
    return value, None


def read_json(path: Path) -> dict | None:
    """A JSON object file's content, or None when it is missing or not what it should be (inspect_json)."""
    return inspect_json(path)[0]


def each_run(fn: Callable, items) -> list:
    """[fn(item) for item in items], WRITERS at a time: each item's files are its own run's, and writing them
    waits on the disk (fsync) or, on a cluster filesystem, on its server; a 1,000-run sweep would otherwise
    wait for each in turn."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(WRITERS) as pool:
        return list(pool.map(fn, items))


def check_locking(folder: Path, trust_flock: bool = False) -> None:
    """The harness writes into `folder` and its claims need flock; some NFS and Lustre mounts do not give it,
    and some give it only within one mount (mounts.unshared_flock), which `trust_flock` accepts."""
    path = folder / ".lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open_lock(path)
    except OSError as err:
        raise StoreError(f"{err.filename or path}: cannot write here ({err.strerror}); the harness keeps its "
                         f"state in the results folder: choose one you can write (--results)") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(handle, fcntl.LOCK_UN)
    except BlockingIOError:
        pass  # held by another harness right now: locking works
    except OSError as err:
        raise StoreError(f"{folder}: file locking (flock) does not work on this filesystem ({err.strerror}); "
                         f"two harnesses could run the same run twice. Use a --results folder on a local disk "
                         f"or a filesystem with flock (NFS: a running lockd, no 'nolock'; Lustre: mount "
                         f"-o flock)") from None
    finally:
        os.close(handle)
    mount = None if trust_flock else mounts.mount_of(folder)
    reason = mount and mounts.unshared_flock(mount)
    if reason:
        raise StoreError(f"{folder}: flock on this filesystem ({mount.fstype} at {mount.point}) may hold within "
                         f"one mount only: {reason}. A harness or job that reaches the folder through another "
                         f"mount (another node) could then run the same run twice. Use a --results folder on "
                         f"a local disk or on a filesystem whose flock is shared (NFS with local_lock=none, "
                         f"Lustre -o flock), or pass --trust-flock if every process that uses this folder goes "
                         f"through this one mount or the filesystem forwards its locks")


def check_root(results: Path, linked_ok: bool) -> None:
    """The results folder itself may be a symbolic link (to cluster scratch, say) only with `linked_ok`
    (--linked-results); links inside it are refused whatever it is (Store.links)."""
    if results.is_symlink() and not linked_ok:
        raise StoreError(f"--results {results} is a symbolic link (to {os.readlink(results)}); pass "
                         f"--linked-results to write through it (links inside it stay refused), or name its target")


def open_lock(path: Path) -> int:
    """A lock file's descriptor (created if missing); a symbolic link there is refused, never followed."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise StoreError(f"{path} is a symbolic link; the harness writes nothing through links in a results "
                             f"folder: remove it") from None
        raise


def _process_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first), or None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot): with the pid it names one process, as a pid
    alone does not once the pid is reused."""
    fields = _process_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def pid_alive(pid: int, started: int | None = None) -> bool:
    """True for a running or stopped process (a zombie is dead); with `started`, only the process
    that started then (not a later one given the same pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _process_stat(pid)
    if fields is None:
        return True
    return fields[0] != "Z" and (started is None or len(fields) <= 19 or int(fields[19]) == started)


def owner(**extra) -> dict:
    """Who is claiming: this host and process, plus backend details, and a new fencing token: a claim
    taken over gets a new one, so a former owner knows it lost the run (Store.fence)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": process_start(pid), "time": time.time(),
            "token": uuid.uuid4().hex, **extra}


class Store:
    def __init__(self, root: str | Path, sweep: str, liveness: Liveness = cannot_tell):
        self.root = Path(root).resolve()
        self.sweep = check_sweep_name(sweep)
        self.dir = self.root / sweep
        self.liveness = liveness

    # ---- layout -------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.dir / run_id

    def board_dir(self, folder_name: str) -> Path:
        """A run's TensorBoard folder, under the sweep's, so `tensorboard --logdir results/<sweep>` shows all."""
        return self.dir / BOARD / folder_name

    def aside_dir(self) -> Path:
        """Where `harness run` sets aside a run folder it replaces (a failed or changed run)."""
        return self.dir / ASIDE

    def backend_dir(self, backend: str) -> Path:
        """A backend's working folder in the sweep (its job scripts and logs, its trial state)."""
        return self.dir / f".{backend}"

    def complexity_cache(self) -> Path:
        """The results folder's cache of MAC and FLOP counts, one for all its sweeps: an architecture is
        counted once however many sweeps and runs it has."""
        return self.root / COMPLEXITY

    def links(self, run_ids: list[str]) -> list[Path]:
        """The symbolic links where the harness would write for these runs: the sweep folder, its
        working folders, the run folders and what is opened in them in place. Anyone in a group can
        plant one in a shared results folder, so a link there is refused, never followed (the results
        root itself may be a link only with `--linked-results`: check_root)."""
        places = [self.dir, self.complexity_cache(), *(self.dir / name for name in SWEEP_FOLDERS)]
        board = self.dir / BOARD
        if board.is_dir() and not board.is_symlink():
            places += list(board.iterdir())
        for rid in run_ids:
            places += [self.run_dir(rid), *(self.run_dir(rid) / name for name in RUN_PATHS)]
        return [path for path in places if path.is_symlink()]

    def run_ids(self) -> list[str]:
        """The sweep's run folders: those with a spec.yaml or a status.json (not figures/ or a user's notes)."""
        if not self.dir.is_dir():
            return []
        return sorted(e.name for e in os.scandir(self.dir) if e.is_dir() and not e.name.startswith(".")
                      and any(os.path.exists(os.path.join(e.path, name)) for name in ("spec.yaml", "status.json")))

    def spec_version(self) -> int | None:
        """The spec version this sweep was first planned at (1 before versions were recorded); None if new."""
        path = self.dir / "sweep.json"
        info, why = inspect_json(path)
        if why:
            raise StoreError(f"{path} is corrupt ({why}); it records the spec version the sweep was planned "
                             f"at: restore it from a backup, or delete it if the sweep was planned with "
                             f"spec version {config.SPEC_VERSION} (this code's)")
        if info is None:
            return 1 if self.run_ids() else None
        return info.get("spec_version", 1)

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
        refuse_link(folder, "run folder")
        io.ensure_dir(folder)
        atomic_write_yaml(folder / "spec.yaml", spec)
        if not (folder / "status.json").exists():
            atomic_write_json(folder / "status.json", {
                "run_id": run_id, "state": "pending", "attempts": 0, "settings": settings,
                "created": time.time()})

    def corrupt_files(self, run_id: str) -> dict[str, str]:
        """{name: why} for the run's metrics.json / status.json that exist but do not read as they should."""
        bad = {}
        for name in ("metrics.json", "status.json"):
            why = inspect_json(self.run_dir(run_id) / name)[1]
            if why:
                bad[name] = why
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

    def update(self, run_id: str, token: str | None = None, /, **fields) -> dict:
        """Read-modify-write status.json (atomic replace); with `token`, only while the claim is that
        token's (else LostClaim, nothing written)."""
        with self.fence(run_id, token):
            return self._merge_status(run_id, fields)

    def _merge_status(self, run_id: str, fields: dict) -> dict:
        status = {**self.status(run_id), **fields, "updated": time.time()}
        atomic_write_json(self.run_dir(run_id) / "status.json", status)
        return status

    def is_done(self, run_id: str) -> bool:
        """Done means a metrics.json that reads, with its mIoU."""
        return read_json(self.run_dir(run_id) / "metrics.json") is not None

    def state(self, run_id: str, stale_after: float = STALE_AFTER, status: dict | None = None,
              asked: tuple[dict, bool | None] | None = None) -> str:
        """done / queued / running / failed / cancelled / crashed / corrupt / pending, from the files on disk
        (`asked`: the claim as read and its liveness, when they were asked already: claim_alive)."""
        if self.is_done(run_id):
            return "done"
        if self.corrupt_files(run_id):
            return "corrupt"
        state = (status or self.status(run_id)).get("state", "pending")
        if state in ACTIVE or self._claim_path(run_id).exists():
            if not self.claim_alive(run_id, stale_after, asked):
                return "crashed"
            return state if state in ACTIVE else "running"
        return "pending" if state == "done" else state  # status said done but metrics.json is gone

    def cancel_path(self, run_id: str) -> Path:
        """A file that asks the run's worker, wherever it runs, to stop at a checkpoint."""
        return self.run_dir(run_id) / "cancel"

    def has_checkpoint(self, run_id: str) -> bool:
        return any((self.run_dir(run_id) / "checkpoints").glob("iter_*.pt"))

    def record_cancelled(self, run_id: str, token: str | None = None) -> None:
        """`harness cancel` stopped the run (its checkpoint stays); the claim is let go."""
        self.update(run_id, token, state="cancelled", error="cancelled by `harness cancel`", finished=time.time())
        self.release(run_id, token)

    def write_error(self, run_id: str, summary: str, trace: str, token: str | None = None) -> None:
        atomic_write_text(self.run_dir(run_id) / "error.txt", trace, self.guard(run_id, token))
        self.update(run_id, token, state="failed", error=summary, finished=time.time())

    # ---- claims -------------------------------------------------------
    def _claim_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "claim"

    @contextlib.contextmanager
    def _lock(self, run_id: str):
        """Serialises claim and status changes of one run across processes."""
        folder = self.run_dir(run_id)
        refuse_link(folder, "run folder" if run_id else "sweep folder")
        io.ensure_dir(folder)
        handle = open_lock(folder / ".lock")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)  # releases the lock

    def claim_info(self, run_id: str) -> dict | None:
        return read_json(self._claim_path(run_id))

    def claim_alive(self, run_id: str, stale_after: float, asked: tuple[dict, bool | None] | None = None) -> bool:
        """Is the claim's owner still at work? Its backend says where it can (a SLURM job in squeue): the
        store's liveness is asked, unless `asked` holds this very claim with its answer already. On
        this host the owner's process decides, whatever the heartbeat: a stopped process (Ctrl-Z, SIGSTOP,
        a suspended machine) still owns its run. Elsewhere a heartbeat older than `stale_after` means
        gone; should that owner wake up, its fencing token no longer matches and it writes nothing."""
        path = self._claim_path(run_id)
        info = read_json(path)
        if info is None:
            return False
        alive = asked[1] if asked and asked[0] == info else self.liveness([info])[0]
        if alive is not None:
            return alive
        if info.get("host") == socket.gethostname() and info.get("pid"):
            return pid_alive(info["pid"], info.get("started"))
        try:
            return time.time() - path.stat().st_mtime < stale_after
        except FileNotFoundError:
            return False

    def claim(self, run_id: str, who: dict, stale_after: float = STALE_AFTER) -> bool:
        """Take the run for `who` (owner(): with its fencing token); False when it is done or a live
        owner holds it. A stale claim is taken over."""
        with self._lock(run_id):
            if self.is_done(run_id):  # finished by someone else since it was planned
                return False
            path = self._claim_path(run_id)
            if path.exists() or path.is_symlink():
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
            if held.get("token") == submitter["token"]:
                atomic_write_text(self._claim_path(run_id), json.dumps({**job, "token": submitter["token"]}))
                self._merge_status(run_id, {**fields, "state": "queued"})
            elif held.get("job_id") == job["job_id"]:
                self._merge_status(run_id, fields)

    def take_for_job(self, run_id: str, who: dict, stale_after: float = STALE_AFTER) -> bool:
        """A starting SLURM job takes its run (with `who`'s new token), unless the run is done or another
        live owner holds it: another job, or a process that is not the submitter that queued this job."""
        with self._lock(run_id):
            if self.is_done(run_id):
                return False
            held = read_json(self._claim_path(run_id)) or {}
            ours = held.get("job_id") == who["job_id"] or (held.get("job_id") is None
                                                            and held.get("backend") == "slurm")
            if held and not ours and self.claim_alive(run_id, stale_after):
                return False
            atomic_write_text(self._claim_path(run_id), json.dumps(who))
            return True

    def retake(self, run_id: str, who: dict, token: str) -> None:
        """The claim's owner hands it, with its token, to another process (e.g. the worker it started,
        or a retried Ray trial after the first try let it go); LostClaim when another owner's token
        is on it."""
        with self._lock(run_id):
            held = read_json(self._claim_path(run_id))
            if held is not None and held.get("token") != token:
                raise LostClaim(f"{self.run_dir(run_id)}: another process took this run over; this one "
                                f"writes nothing more to it")
            atomic_write_text(self._claim_path(run_id), json.dumps({**who, "token": token}))

    def holds(self, run_id: str, token: str) -> bool:
        return (read_json(self._claim_path(run_id)) or {}).get("token") == token

    @contextlib.contextmanager
    def fence(self, run_id: str, token: str | None):
        """Hold the run's lock while a write happens, and raise LostClaim before it when the claim is
        no longer `token`'s (taken over). A None token writes unconditionally (the harness's own
        bookkeeping, under the lock)."""
        with self._lock(run_id):
            if token is not None and not self.holds(run_id, token):
                raise LostClaim(f"{self.run_dir(run_id)}: another process took this run over (or let it go); "
                                f"this one writes nothing more to it")
            yield

    def guard(self, run_id: str, token: str | None):
        """fence() as a guard for protoseg's writes (io.atomic_write_bytes, the engine)."""
        return lambda: self.fence(run_id, token)

    def heartbeat(self, run_id: str, token: str | None = None) -> bool:
        """Touch the claim; False (and nothing touched) once it is not `token`'s."""
        try:
            with self.fence(run_id, token):
                os.utime(self._claim_path(run_id), follow_symlinks=False)
        except LostClaim:
            return False
        except FileNotFoundError:
            return token is None
        return True

    def release(self, run_id: str, token: str | None = None) -> None:
        """Let the claim go; with `token`, only while it is that token's (never another owner's)."""
        with self._lock(run_id):
            if token is None or self.holds(run_id, token):
                self._claim_path(run_id).unlink(missing_ok=True)

    # ---- reading many runs fast (status, report) -----------------------
    def rows(self, stale_after: float = STALE_AFTER) -> list[dict]:
        """One dict per run: status.json fields, the derived state and, while running, progress."""
        out, statuses = [], {rid: read_json(self.run_dir(rid) / "status.json") or {} for rid in self.run_ids()}
        claims = {rid: claim for rid, s in statuses.items() if s.get("state") in ACTIVE
                  and (claim := self.claim_info(rid))}
        asked = {rid: (claim, alive)  # one question for all the claims (one squeue), not one per run
                 for (rid, claim), alive in zip(claims.items(), self.liveness(list(claims.values())))}
        for rid, status in statuses.items():
            folder = self.run_dir(rid)
            status["run_id"] = rid
            status["state"] = self.state(rid, stale_after, status, asked.get(rid))
            if status["state"] == "running":
                status["progress"] = read_json(folder / "progress.json")
            if status["state"] == "done" and status.get("mIoU") is None:  # finished before status.json was kept
                status["mIoU"] = (read_json(folder / "metrics.json") or {}).get("mIoU")
            out.append(status)
        unnamed = [row for row in out if not row.get("settings")]
        if unnamed:
            self._name_by_spec(unnamed, out)
        return out

    def _name_by_spec(self, unnamed: list[dict], rows: list[dict]) -> None:
        """Settings for runs whose status.json records none (or is missing): the spec fields that vary
        across the sweep's runs, as `status` shows a matrix's axes."""
        specs = {}
        for row in rows:
            try:
                specs[row["run_id"]] = config.flatten(config.rename_keys(load_spec(self.run_dir(row["run_id"])) or {},
                                                                         None))
            except StoreError:
                specs[row["run_id"]] = {}
        resources = config.tagged(config.RESOURCE)
        paths = dict.fromkeys(p for flat in specs.values() for p in flat if p not in resources)
        values = {p: [repr(flat.get(p)) for flat in specs.values()] for p in paths}
        shown: list[str] = []
        for path in (p for p in paths if len(set(values[p])) > 1):
            # a field that follows from one already shown (a backbone's weights, its iterations) says nothing new
            if not any(len(set(zip(values[q], values[path]))) == len(set(values[q])) for q in shown):
                shown.append(path)
        for row in unnamed:
            flat = specs[row["run_id"]]
            unused = config.unused_fields(collections.defaultdict(lambda: None, flat))
            row["settings"] = {p: flat.get(p) for p in shown if p not in unused}


def sweeps(results: Path, name: str | None = None, liveness: Liveness = cannot_tell) -> list[Store]:
    """The sweep `name` under `results` (StoreError naming the known ones when it has no folder), or,
    without a name, every sweep there: each folder with a sweep.json."""
    if name:
        store = Store(results, name, liveness)
        if not store.dir.is_dir():
            known = sorted(p.name for p in results.iterdir() if p.is_dir() and p.name != NOT_A_SWEEP
                           and not p.name.startswith(".")) if results.is_dir() else []
            raise StoreError(f"no sweep '{store.sweep}' under {results}; known: {', '.join(known) or '(none)'}")
        return [store]
    if not results.is_dir():
        return []
    return [Store(results, p.name, liveness) for p in sorted(results.iterdir()) if p.is_dir()
            and SWEEP_NAME.match(p.name) and p.name != NOT_A_SWEEP and (p / "sweep.json").exists()]


def load_spec(run_dir: Path) -> dict:
    return read_yaml(Path(run_dir) / "spec.yaml", "run spec", StoreError)
