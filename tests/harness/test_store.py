"""harness.store.Store: the run folders on disk are the only state. A run is
claimed exclusively; a claim whose owner is gone (dead pid on this host, or no
heartbeat for `stale_after` seconds) is taken over; every write is atomic."""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from harness.store import LostClaim, Store, load_spec, owner, process_start
from protoseg.io import atomic_write_json

SPEC = {"model": {"head": "parametric"}, "train": {"iterations": 3}}


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "results", "sweep")


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def tmp_files(folder) -> list[str]:
    return [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
            if name.endswith(".tmp")]


def age(path, seconds: float) -> None:
    """Pretend `path` was last touched `seconds` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


# ---- prepare / status -------------------------------------------------------------------

def test_prepare_writes_spec_and_pending_status(store):
    store.prepare("abc", SPEC, {"model.head": "parametric"})
    folder = store.run_dir("abc")
    assert load_spec(folder) == SPEC
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "pending" and status["attempts"] == 0
    assert status["run_id"] == "abc" and status["settings"] == {"model.head": "parametric"}
    assert store.state("abc") == "pending"
    assert store.run_ids() == ["abc"]


def test_prepare_keeps_the_status_and_writes_the_current_spec(store):
    """Each attempt runs with the current experiment's resource fields (device, threads, ...)."""
    store.prepare("abc", SPEC, {"a": 1})
    store.update("abc", state="failed", attempts=3, error="boom")
    current = {**SPEC, "train": {"iterations": 3, "device": "cpu"}}
    store.prepare("abc", current, {"a": 2})
    assert load_spec(store.run_dir("abc")) == current
    status = store.status("abc")
    assert status["state"] == "failed" and status["attempts"] == 3 and status["settings"] == {"a": 1}


def test_update_merges_fields(store):
    store.prepare("abc", SPEC, {})
    store.update("abc", state="running", attempts=1)
    status = store.update("abc", pid=123)
    assert status["state"] == "running" and status["attempts"] == 1 and status["pid"] == 123
    assert store.status("abc") == status
    assert "updated" in status


def test_status_of_an_unknown_run_is_pending(store):
    assert store.status("nope") == {"run_id": "nope", "state": "pending"}
    assert store.state("nope") == "pending"
    assert store.run_ids() == []


def test_run_ids_skip_hidden_folders_and_files(store):
    store.prepare("b", SPEC, {})
    store.prepare("a", SPEC, {})
    (store.dir / ".replaced").mkdir()
    (store.dir / "sweep.json").write_text("{}")
    assert store.run_ids() == ["a", "b"]


def test_record_sweep_appends_invocations_and_unions_run_ids(store, tmp_path):
    store.dir.mkdir(parents=True)
    store.record_sweep(str(tmp_path / "x.yaml"), "abc123", {"jobs": 2}, ["r1", "r2"])
    store.record_sweep(str(tmp_path / "x.yaml"), "def456-dirty", {"jobs": 1}, ["r2", "r3"])
    info = json.loads((store.dir / "sweep.json").read_text())
    assert info["run_ids"] == ["r1", "r2", "r3"]
    assert [i["commit"] for i in info["invocations"]] == ["abc123", "def456-dirty"]
    assert info["source"] == str((tmp_path / "x.yaml").resolve())


# ---- claims -----------------------------------------------------------------------------

def test_claim_is_exclusive_while_the_owner_lives(store):
    store.prepare("r", SPEC, {})
    assert store.claim("r", owner(backend="local"))
    # another live process of this host (our parent) cannot take it
    other = {"host": socket.gethostname(), "pid": os.getppid(), "time": time.time()}
    assert not store.claim("r", other)
    assert store.claim_info("r")["pid"] == os.getpid()
    assert store.state("r") == "running"


def test_claim_of_a_dead_pid_on_this_host_is_taken_over(store):
    store.prepare("r", SPEC, {})
    gone = {"host": socket.gethostname(), "pid": dead_pid(), "time": time.time()}
    assert store.claim("r", gone)
    assert store.state("r") == "crashed"  # fresh heartbeat, but the owner is dead
    assert store.claim("r", owner(backend="local"))
    assert store.claim_info("r")["pid"] == os.getpid()


def test_claim_of_a_dead_pid_on_another_host_waits_for_the_heartbeat(store):
    """Another host's pid cannot be checked: only a stale heartbeat frees its claim."""
    store.prepare("r", SPEC, {})
    remote = {"host": "some-other-node", "pid": dead_pid(), "time": time.time()}
    assert store.claim("r", remote)
    assert not store.claim("r", owner(), stale_after=60)
    age(store.run_dir("r") / "claim", 61)
    assert store.claim("r", owner(), stale_after=60)
    assert store.claim_info("r")["host"] == socket.gethostname()


def test_a_live_process_on_this_host_keeps_its_claim_whatever_its_heartbeat(store):
    """A stopped process (Ctrl-Z, SIGSTOP, a suspended machine) has an old heartbeat but is alive:
    taking its run over would make two trainers of one run folder."""
    store.prepare("r", SPEC, {})
    parent = os.getppid()
    assert store.claim("r", {"host": socket.gethostname(), "pid": parent, "started": process_start(parent),
                             "token": "theirs"})
    age(store.run_dir("r") / "claim", 10_000)
    assert store.state("r", stale_after=60) == "running"
    assert not store.claim("r", owner(), stale_after=60)
    assert store.claim_info("r")["token"] == "theirs"


def test_a_reused_pid_does_not_keep_a_dead_owners_claim(store):
    """The claim names its process by pid and start time: another process given the same pid later
    is not the owner."""
    store.prepare("r", SPEC, {})
    parent = os.getppid()
    assert store.claim("r", {"host": socket.gethostname(), "pid": parent, "started": process_start(parent) - 1})
    assert store.state("r", stale_after=60) == "crashed"
    assert store.claim("r", owner(), stale_after=60)
    assert store.claim_info("r")["pid"] == os.getpid()


def test_heartbeat_keeps_a_claim_fresh(store):
    store.prepare("r", SPEC, {})
    assert store.claim("r", {"host": socket.gethostname(), "pid": os.getppid()})
    claim = store.run_dir("r") / "claim"
    age(claim, 300)
    store.heartbeat("r")
    assert time.time() - claim.stat().st_mtime < 5
    assert not store.claim("r", owner(), stale_after=60)
    assert store.state("r", stale_after=60) == "running"


def test_heartbeat_and_release_without_a_claim_are_harmless(store):
    store.prepare("r", SPEC, {})
    store.heartbeat("r")
    store.release("r")
    assert not (store.run_dir("r") / "claim").exists()


def test_an_empty_claim_is_taken_over(store):
    """A claimer killed between creating the file and writing it leaves an empty claim."""
    store.prepare("r", SPEC, {})
    (store.run_dir("r") / "claim").write_text("")
    assert store.state("r") in ("pending", "crashed")  # not "running": nobody can be shown to own it
    assert store.claim("r", owner())
    assert store.claim_info("r")["pid"] == os.getpid()


def test_release_frees_the_claim(store):
    store.prepare("r", SPEC, {})
    assert store.claim("r", owner())
    store.release("r")
    assert store.claim_info("r") is None
    assert store.claim("r", {"host": socket.gethostname(), "pid": os.getppid()})


def test_retake_hands_the_claim_to_another_process(store):
    store.prepare("r", SPEC, {})
    harness = owner(backend="local")
    assert store.claim("r", harness)
    worker = {"host": socket.gethostname(), "pid": os.getppid(), "backend": "local"}
    store.retake("r", worker, harness["token"])
    assert store.claim_info("r") == {**worker, "token": harness["token"]}  # handed on, not taken over
    assert not store.claim("r", owner())  # still held, by the new owner


# ---- fencing -----------------------------------------------------------------------------

@pytest.fixture
def taken_over(store):
    """A run claimed by `first`, whose claim was then taken over by another owner (as a harness on
    another host does once first's heartbeat is stale): (first's token, the new claim's content)."""
    store.prepare("r", SPEC, {})
    first = owner(backend="local")
    assert store.claim("r", first)
    store.update("r", first["token"], state="running", attempts=1)
    second = {**owner(backend="local"), "host": "another-node"}
    (store.run_dir("r") / "claim").write_text(json.dumps(second))
    return first["token"], second


def test_a_former_owner_writes_nothing_after_a_takeover(store, taken_over):
    token, second = taken_over
    status = (store.run_dir("r") / "status.json").read_bytes()
    with pytest.raises(LostClaim):
        store.update("r", token, state="done")
    with pytest.raises(LostClaim):
        store.write_error("r", "E: x", "trace", token)
    with pytest.raises(LostClaim):
        store.retake("r", owner(backend="local"), token)
    with pytest.raises(LostClaim):
        atomic_write_json(store.run_dir("r") / "metrics.json", {"mIoU": 1.0}, store.guard("r", token))
    claim = store.run_dir("r") / "claim"
    age(claim, 50)
    assert not store.heartbeat("r", token)  # the heartbeat says it lost, and touches nothing
    assert time.time() - claim.stat().st_mtime > 40
    store.release("r", token)  # never another owner's claim
    assert store.claim_info("r") == second
    assert (store.run_dir("r") / "status.json").read_bytes() == status
    assert sorted(os.listdir(store.run_dir("r"))) == [".lock", "claim", "spec.yaml", "status.json"]


def test_the_owner_with_the_token_writes(store, taken_over):
    _, second = taken_over
    assert store.heartbeat("r", second["token"])
    store.update("r", second["token"], state="running", attempts=2)
    assert store.status("r")["attempts"] == 2
    store.release("r", second["token"])
    assert store.claim_info("r") is None


# ---- derived state ------------------------------------------------------------------------

def test_done_iff_metrics_json_exists(store):
    store.prepare("r", SPEC, {})
    for state in ("pending", "running", "failed", "cancelled"):
        store.update("r", state=state)
        assert store.state("r") != "done"
    (store.run_dir("r") / "metrics.json").write_text('{"mIoU": 50.0}')
    for state in ("pending", "running", "failed", "cancelled", "done"):
        store.update("r", state=state)
        assert store.state("r") == "done" and store.is_done("r")


def test_status_done_without_metrics_is_pending(store):
    store.prepare("r", SPEC, {})
    store.update("r", state="done")
    assert store.state("r") == "pending"


def test_running_with_a_live_claim_is_running(store):
    store.prepare("r", SPEC, {})
    store.update("r", state="running")
    assert store.claim("r", owner())
    assert store.state("r") == "running"


def test_running_without_a_claim_is_crashed(store):
    store.prepare("r", SPEC, {})
    store.update("r", state="running")
    assert store.state("r") == "crashed"


def test_running_with_a_dead_owner_is_crashed(store):
    store.prepare("r", SPEC, {})
    store.update("r", state="running")
    assert store.claim("r", {"host": socket.gethostname(), "pid": dead_pid()})
    assert store.state("r") == "crashed"


def test_running_with_a_stale_heartbeat_is_crashed(store):
    store.prepare("r", SPEC, {})
    store.update("r", state="running")
    assert store.claim("r", {"host": "elsewhere", "pid": 1})
    assert store.state("r", stale_after=60) == "running"
    age(store.run_dir("r") / "claim", 61)
    assert store.state("r", stale_after=60) == "crashed"


def test_failed_and_cancelled_stay_as_recorded(store):
    store.prepare("r", SPEC, {})
    store.write_error("r", "ValueError: boom", "Traceback (most recent call last):\n  ...\nValueError: boom\n")
    assert store.state("r") == "failed"
    assert store.status("r")["error"] == "ValueError: boom"
    assert "Traceback" in (store.run_dir("r") / "error.txt").read_text()
    store.update("r", state="cancelled")
    assert store.state("r") == "cancelled"


def test_has_checkpoint(store):
    store.prepare("r", SPEC, {})
    assert not store.has_checkpoint("r")
    (store.run_dir("r") / "checkpoints").mkdir()
    (store.run_dir("r") / "checkpoints" / ".iter_00000005.pt.x.tmp").write_bytes(b"partial")
    assert not store.has_checkpoint("r")  # a half-written checkpoint does not count
    (store.run_dir("r") / "checkpoints" / "iter_00000005.pt").write_bytes(b"x")
    assert store.has_checkpoint("r")


def test_rows_give_derived_state_and_progress(store):
    for rid in ("a", "b", "c"):
        store.prepare(rid, SPEC, {"rid": rid})
    (store.run_dir("a") / "metrics.json").write_text('{"mIoU": 50.0}')
    store.update("b", state="running")
    assert store.claim("b", owner())
    (store.run_dir("b") / "progress.json").write_text(json.dumps({"iteration": 2, "iterations": 3, "loss": 0.5}))
    rows = {row["run_id"]: row for row in store.rows()}
    assert {rid: row["state"] for rid, row in rows.items()} == {"a": "done", "b": "running", "c": "pending"}
    assert rows["b"]["progress"] == {"iteration": 2, "iterations": 3, "loss": 0.5}
    assert rows["c"]["settings"] == {"rid": "c"}


# ---- atomic writes ---------------------------------------------------------------------------

def test_no_temporary_files_are_left(store):
    store.dir.mkdir(parents=True)
    store.record_sweep("x.yaml", None, {}, ["r"])
    store.prepare("r", SPEC, {})
    who = owner()
    store.claim("r", who)
    store.retake("r", owner(backend="local"), who["token"])
    store.update("r", who["token"], state="running")
    store.heartbeat("r", who["token"])
    store.write_error("r", "E: x", "trace", who["token"])
    store.release("r", who["token"])
    assert tmp_files(store.dir) == []
    assert sorted(os.listdir(store.run_dir("r"))) == [".lock", "error.txt", "spec.yaml", "status.json"]


def test_a_failed_write_keeps_the_old_file_whole(store, monkeypatch):
    store.prepare("r", SPEC, {})
    store.update("r", state="running", attempts=1)
    before = (store.run_dir("r") / "status.json").read_text()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        store.update("r", state="failed", error="x" * 100_000)
    monkeypatch.undo()
    assert (store.run_dir("r") / "status.json").read_text() == before
    assert store.status("r")["state"] == "running"
    assert tmp_files(store.dir) == []


def test_spec_yaml_round_trips(store):
    spec = {"model": {"head": "nonparametric", "pretrained": None, "gamma": 0.999},
            "data": {"crop_size": [64, 64]}, "eval": {"scales": [0.5, 1.0]}}
    store.prepare("r", spec, {})
    assert yaml.safe_load((store.run_dir("r") / "spec.yaml").read_text()) == spec


# ---- a real race between two processes -------------------------------------------------

RACE_IDS = [f"run{i:02d}" for i in range(20)]


def _race(root: str, start, finish, out) -> None:
    """Child process: wait for the start gun, claim every run it can, stay alive
    (a live owner) until both have finished, then report what it got."""
    store = Store(root, "race")
    start.wait(30)
    got = [rid for rid in RACE_IDS if store.claim(rid, owner(backend="test"))]
    finish.wait(30)
    out.put((os.getpid(), got))


@pytest.mark.slow
def test_two_processes_racing_claim_each_run_exactly_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    root = str(tmp_path / "results")
    start, finish, out = ctx.Barrier(2), ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(root, start, finish, out)) for _ in range(2)]
    for proc in procs:
        proc.start()
    results = dict(out.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    claimed = [rid for got in results.values() for rid in got]
    assert sorted(claimed) == RACE_IDS, f"claimed twice or never: {results}"
    # the claim file names the process that won
    store = Store(root, "race")
    for pid, got in results.items():
        for rid in got:
            assert store.claim_info(rid)["pid"] == pid
