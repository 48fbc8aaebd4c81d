"""How the store judges a claim held by a SLURM job when squeue answers, fails or
is absent. A stand-in squeue on PATH makes each case certain and fast; the real
squeue is exercised by test_slurm_backend."""
from __future__ import annotations

import os
import time

import pytest

from harness import backends
from harness.backends import slurm_jobs
from harness.store import Store, owner


@pytest.fixture
def squeue(tmp_path, monkeypatch):
    """write(script body) installs a squeue that runs it; the cache starts empty."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr(slurm_jobs, "_cache", {})

    def write(body: str):
        (bin_dir / "squeue").write_text("#!/bin/sh\n" + body + "\n")
        (bin_dir / "squeue").chmod(0o755)
        slurm_jobs._cache.clear()

    return write


def queued_run(tmp_path, job="41_3") -> tuple[Store, str]:
    store = Store(tmp_path / "results", "s", backends.alive)
    store.prepare("r1", {"model": {}}, {})
    assert store.claim("r1", {**owner(backend="slurm", job_id=job), "pid": None})
    store.update("r1", state="queued", backend="slurm", job_id=job)
    return store, "r1"


@pytest.mark.parametrize("state, alive", [("PENDING", True), ("RUNNING", True), ("REQUEUED", True),
                                          ("COMPLETED", False), ("CANCELLED", False), ("TIMEOUT", False)])
def test_a_listed_job_is_alive_until_it_ends(squeue, state, alive):
    squeue(f'echo "41_3|{state}"')
    assert slurm_jobs.alive("41_3") is alive


def test_a_job_squeue_no_longer_knows_is_dead(squeue, tmp_path):
    squeue('echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1')
    assert slurm_jobs.alive("41_3") is False
    store, rid = queued_run(tmp_path)
    assert store.state(rid) == "crashed" and store.claim(rid, owner())


def test_an_unanswered_squeue_never_makes_a_queued_run_look_dead(squeue, tmp_path):
    squeue('echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1')
    store, rid = queued_run(tmp_path)
    old = time.time() - 3600  # no heartbeat for an hour: a queued job has none
    os.utime(store.run_dir(rid) / "claim", (old, old))
    assert slurm_jobs.alive("41_3") is True
    assert store.state(rid) == "queued" and not store.claim(rid, owner())
    assert [row["state"] for row in store.rows()] == ["queued"]


def test_without_a_slurm_client_the_heartbeat_decides(squeue, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    store, rid = queued_run(tmp_path)
    assert slurm_jobs.alive("41_3") is None
    assert store.state(rid) == "queued"  # fresh claim
    assert store.state(rid, stale_after=0) == "crashed"


def test_cancel_in_the_queue_names_only_the_jobs_that_had_not_started(squeue, tmp_path):
    squeue('echo "41_1|RUNNING"; echo "41_2|PENDING"; echo "41_3|PENDING"; echo "40|COMPLETED"')
    log = tmp_path / "scancel.log"
    scancel = tmp_path / "bin" / "scancel"
    scancel.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    scancel.chmod(0o755)
    assert slurm_jobs.cancel(["41_1", "41_2", "41_3", "40", "39"], pending_only=True) == {"41_2", "41_3"}
    assert log.read_text().split() == ["--state=PENDING", "41_2", "41_3"]
    assert slurm_jobs.cancel(["41_1", "40"], pending_only=False) == {"41_1"}
    assert log.read_text().splitlines()[-1].split() == ["41_1"]


def test_the_tasks_of_a_thousand_run_sweep_are_one_squeue_call_about_their_arrays(squeue, tmp_path):
    calls = tmp_path / "calls"
    tasks = [f"41_{i}" for i in range(600)] + [f"42_{i}" for i in range(400)] + ["43"]
    squeue(f'echo "$@" >>{calls}; echo "41_0|RUNNING"; echo "41_7|PENDING"; echo "42_9|COMPLETED"; '
           f'echo "44_1|RUNNING"')
    alive = slurm_jobs.alive_many(tasks)
    (call,) = calls.read_text().splitlines()
    assert call.endswith("--jobs=41,42,43")
    assert [job for job, live in zip(tasks, alive) if live] == ["41_0", "41_7"]  # 42_9 ended, 44_1 not asked
