"""The SLURM backend against a real single-node SLURM (slurm/dev-cluster):
`harness run --backend slurm` in subprocesses, jobs run by slurmd through
submitit. What a researcher on a cluster relies on: one job array, the same
results as the local backend, a preempted or timed-out run resumes from its
checkpoint, `harness cancel`, a dead submitting shell, a failing cell."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, free_port, harness_command, needs_dev_slurm, run_harness, same_results, tiny_experiment
from harness.store import Store

pytestmark = [pytest.mark.slow, needs_dev_slurm]
TIMEOUT = 300


def experiment(folder: Path, name: str, axes=None, include=None, iterations=6, **executor) -> Path:
    axes = axes if axes is not None else {"model.head": ["parametric", "nonparametric"], "train.seed": [0, 1]}
    return tiny_experiment(folder, name, axes, include, iterations, {"backend": "slurm", "jobs": 2, **executor})


def harness(*args, results: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return run_harness(*args, results=results, timeout=timeout)


def background(*args, results: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(harness_command(*args, results=results), cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def wait_for(predicate, what: str, timeout: float = 180):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.time() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.5)


def slurm(*args) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, timeout=60).stdout


def status(store: Store) -> dict[str, dict]:
    return {rid: store.status(rid) for rid in store.run_ids()}


def iteration(store: Store, rid: str) -> int:
    progress = store.run_dir(rid) / "progress.json"
    try:
        return json.loads(progress.read_text())["iteration"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.fixture
def results(tmp_path, slurm_cluster):
    return tmp_path / "results"


def test_a_sweep_is_one_job_array_with_the_local_backends_results(tmp_path, results):
    path = experiment(tmp_path, "array4")
    proc = harness("run", path, "--profile", "dev", results=results)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store = Store(results, "array4")
    runs = status(store)
    assert len(runs) == 4 and all(store.state(rid) == "done" for rid in runs)
    jobs = {s["job_id"] for s in runs.values()}
    assert len({job.split("_")[0] for job in jobs}) == 1 and len(jobs) == 4  # ONE array of four tasks
    array = next(iter(jobs)).split("_")[0]
    def accounted():  # a task is done in the store before its job has left SLURM
        lines = slurm("sacct", "-n", "-X", "-P", "-o", "JobID,State,JobName", "-j", array).split()
        return lines if all(line.endswith("|COMPLETED|protoseg-array4") for line in lines) else None

    assert sorted(line.split("|")[0] for line in wait_for(accounted, "sacct to say COMPLETED", 90)) == sorted(jobs)
    for s in runs.values():
        assert s["backend"] == "slurm" and s["attempts"] == 1 and Path(s["log"]).is_file()
    assert "#SBATCH --array=0-3%2" in (results / "array4" / ".slurm" / f"{array}_submission.sh").read_text()

    local = tmp_path / "local"
    assert harness("run", path, "--backend", "local", results=local).returncode == 0
    for rid in runs:
        same_results(store.run_dir(rid), local / "array4" / rid)

    again = harness("run", path, "--profile", "dev", results=results)
    assert again.returncode == 0 and "nothing to run" in again.stdout
    assert again.stdout.count("skip (done)") == 4


def test_usr2_requeues_the_job_and_it_resumes_to_the_same_result(tmp_path, results):
    """A preemption (USR2 to the job) checkpoints, submitit requeues the job, the
    requeued task resumes; the result equals an uninterrupted run's."""
    path = experiment(tmp_path, "preempt", axes={"model.head": ["nonparametric"]}, iterations=30)
    store = Store(results, "preempt")
    proc = background("run", path, "--profile", "dev", results=results, log=tmp_path / "run.log")
    try:
        rid = wait_for(lambda: next(iter(store.run_ids()), None), "the run folder")
        wait_for(lambda: iteration(store, rid) >= 4, "training to pass iteration 4")
        job = store.status(rid)["job_id"]
        slurm("scancel", "--signal=USR2", job)
        wait_for(lambda: store.status(rid).get("state") == "queued" and store.status(rid).get("requeued"),
                 "the run to go back to the queue")
        stopped_at = iteration(store, rid)
        assert 4 <= stopped_at < 30
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True, timeout=60)
        assert proc.wait(TIMEOUT) == 0, (tmp_path / "run.log").read_text()
    finally:
        proc.kill()
    final = store.status(rid)
    assert final["state"] == "done" and final["attempts"] == 2 and final["resumed"] is True
    assert final["job_id"] == job  # the same job, requeued, not a new submission
    assert f"resumed from iteration {stopped_at}" in (store.run_dir(rid) / "train.log").read_text()
    history = json.loads((store.run_dir(rid) / "metrics.json").read_text())["history"]
    assert [h["iteration"] for h in history] == list(range(1, 31))  # every iteration exactly once

    local = tmp_path / "local"
    assert harness("run", path, "--backend", "local", results=local).returncode == 0
    same_results(store.run_dir(rid), local / "preempt" / rid)


def test_a_run_timed_out_more_than_max_timeouts_is_failed_and_resumable(tmp_path, results):
    """With a 10-minute limit submitit counts every USR2 as a time-out; max_timeouts 0
    allows no requeue, so the run is failed with that reason, its checkpoint kept."""
    path = experiment(tmp_path, "timeout", axes={"model.head": ["parametric"]}, iterations=30,
                      timeout_min=10, max_timeouts=0)
    store = Store(results, "timeout")
    proc = background("run", path, "--profile", "dev", results=results, log=tmp_path / "run.log")
    try:
        rid = wait_for(lambda: next(iter(store.run_ids()), None), "the run folder")
        wait_for(lambda: iteration(store, rid) >= 4, "training to pass iteration 4")
        slurm("scancel", "--signal=USR2", store.status(rid)["job_id"])
        assert proc.wait(TIMEOUT) == 1, (tmp_path / "run.log").read_text()  # one failed cell
    finally:
        proc.kill()
    assert store.state(rid) == "failed"
    assert "timed-out too many times" in store.status(rid)["error"]
    assert "max_timeouts" in store.status(rid)["error"]
    assert store.has_checkpoint(rid) and store.claim_info(rid) is None

    retry = harness("run", path, "--profile", "dev", "--retry-failed", results=results)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert store.state(rid) == "done" and store.status(rid)["resumed"] is True


def test_cancel_then_run_completes_the_sweep(tmp_path, results):
    path = experiment(tmp_path, "cancelme", axes={"train.seed": [0, 1, 2]}, iterations=30, jobs=1)
    store = Store(results, "cancelme")
    proc = background("run", path, "--profile", "dev", results=results, log=tmp_path / "run.log")
    try:
        wait_for(lambda: len(store.run_ids()) == 3, "the run folders")
        running = wait_for(lambda: next((r for r in store.run_ids() if iteration(store, r) >= 2), None),
                           "one run to train")
        cancel = harness("cancel", "cancelme", results=results)
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        assert cancel.stdout.count("scancelled in the queue") == 2 and "stopped at a checkpoint" in cancel.stdout
        assert proc.wait(TIMEOUT) == 0  # cancelled is not failed
    finally:
        proc.kill()
    runs = status(store)
    assert {s["state"] for s in runs.values()} == {"cancelled"}
    assert store.has_checkpoint(running) and not any(store.claim_info(r) for r in runs)
    jobs = ",".join(s["job_id"] for s in runs.values())
    wait_for(lambda: not slurm("squeue", "-h", "-j", jobs).strip(), "the jobs to leave the queue", 90)

    again = harness("run", path, "--profile", "dev", results=results)
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(store.state(r) == "done" for r in runs)
    assert store.status(running)["resumed"] is True and store.status(running)["attempts"] == 2


def test_a_killed_submitter_then_run_again_follows_its_jobs_and_submits_nothing_twice(tmp_path, results):
    path = experiment(tmp_path, "orphans", axes={"train.seed": [0, 1]}, iterations=20, jobs=1)
    store = Store(results, "orphans")
    proc = background("run", path, "--profile", "dev", results=results, log=tmp_path / "run.log")
    wait_for(lambda: len(store.run_ids()) == 2 and all(s.get("job_id") for s in status(store).values()),
             "the job ids in status.json")
    os.killpg(proc.pid, signal.SIGKILL)  # the login shell dies; the jobs do not
    proc.wait()
    jobs = {rid: s["job_id"] for rid, s in status(store).items()}

    again = harness("run", path, "--profile", "dev", results=results)  # waits on the jobs it did not submit
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("follow (") == 2 and again.stdout.count("as SLURM job") == 2
    assert "submitted" not in again.stderr and "following 2 run(s)" in again.stderr
    assert "2 run(s) in" in again.stdout and "2 done" in again.stdout
    assert all(store.state(r) == "done" for r in jobs)  # done when it returned, not after
    assert {rid: s["job_id"] for rid, s in status(store).items()} == jobs
    assert all(s["attempts"] == 1 for s in status(store).values())
    array = next(iter(jobs.values())).split("_")[0]
    named = slurm("sacct", "-n", "-X", "-P", "-o", "JobID", "--name=protoseg-orphans").split()
    assert sorted(named) == sorted(jobs.values()) and all(j.startswith(array + "_") for j in named)


def test_a_raising_cell_is_failed_with_its_traceback_and_the_others_complete(tmp_path, results):
    missing = tmp_path / "empty-camvid"
    missing.mkdir()
    path = experiment(tmp_path, "raises", axes={"model.head": ["parametric", "nonparametric"]},
                      include=[{"data.dataset": "camvid", "data.root": str(missing)}])
    store = Store(results, "raises")
    proc = harness("run", path, "--profile", "dev", results=results)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    states = {rid: store.state(rid) for rid in store.run_ids()}
    assert sorted(states.values()) == ["done", "done", "failed"]
    failed = next(r for r, s in states.items() if s == "failed")
    trace = (store.run_dir(failed) / "error.txt").read_text()
    assert trace.startswith("Traceback (most recent call last)") and "FileNotFoundError" in trace
    assert str(missing) in trace and f"failed {failed}" in proc.stderr
    shown = harness("status", "raises", results=results).stdout
    assert "failed" in shown and store.status(failed)["job_id"] in shown and ".slurm/" in shown


def test_two_tasks_per_node_train_one_run_with_ddp_like_torchrun(tmp_path, results):
    """tasks_per_node 2: the job's two tasks are one DDP run (env:// exported from SLURM's
    variables); it equals the same spec under torchrun, and torch takes SLURM_CPUS_PER_TASK threads."""
    path = experiment(tmp_path, "ddp", axes={"model.head": ["nonparametric"]}, iterations=6, tasks_per_node=2,
                      cpus_per_task=1, jobs=1)
    doc = yaml.safe_load(path.read_text())
    doc["base"]["train"]["threads"] = None  # so the thread count comes from SLURM
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = harness("run", path, "--profile", "dev", results=results)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store = Store(results, "ddp")
    rid = store.run_ids()[0]
    metrics = json.loads((store.run_dir(rid) / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["threads"] == 1

    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                               "--master-port", str(free_port()), "-m", "protoseg.engine",
                               "--spec", str(store.run_dir(rid) / "spec.yaml"), "--out", str(tmp_path / "torchrun")],
                              cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    same_results(store.run_dir(rid), tmp_path / "torchrun")
