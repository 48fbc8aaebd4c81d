"""One run across two nodes of a real two-node SLURM (slurm/dev-cluster up --nodes 2, each node its own
network namespace and hostname): DDP over gloo with the rendezvous address from SLURM's node list, the same
training as torchrun's two local processes, and kill -9 of one node's task leaves the run crashed (not
failed) to resume from its checkpoint to the weights of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, free_port, harness_command, needs_dev_slurm, run_harness, same_results, tiny_experiment
from harness.store import Store

pytestmark = [pytest.mark.slow, needs_dev_slurm]
SCRIPT = ROOT / "slurm" / "dev-cluster"
TIMEOUT = 300
ITERATIONS = 30


@pytest.fixture(scope="module")
def two_nodes():
    """The cluster's environment (SLURM_CONF) for harness commands."""
    folder = Path(tempfile.mkdtemp(prefix="devslurm2-", dir="/tmp"))  # munged must reach it: not tmp_path
    up = subprocess.run([str(SCRIPT), "up", str(folder), "--nodes", "2", "--no-check"], capture_output=True,
                        text=True, timeout=600, env={**os.environ, "DEV_SLURM_CPUS": "1"})
    if up.returncode != 0:
        pytest.fail(f"slurm/dev-cluster up --nodes 2 failed:\n{up.stderr}")
    try:
        yield {"SLURM_CONF": str(folder / "slurm.conf")}
    finally:
        subprocess.run([str(SCRIPT), "down", str(folder)], capture_output=True, timeout=300)
        subprocess.run(["rm", "-rf", str(folder)])


def experiment(folder: Path, name: str) -> Path:
    return tiny_experiment(folder, name, {"model.head": ["nonparametric"]}, None, ITERATIONS,
                           {"backend": "slurm", "nodes": 2, "tasks_per_node": 1, "cpus_per_task": 1,
                            "partition": "debug", "timeout_min": 30}, checkpoint_interval=5)


@pytest.fixture(scope="module")
def uninterrupted(two_nodes, tmp_path_factory) -> Path:
    """The run folder of the run trained across both nodes without a fault."""
    folder = tmp_path_factory.mktemp("across")
    proc = run_harness("run", experiment(folder, "across"), results=folder / "results", timeout=TIMEOUT,
                       env=two_nodes)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (rid,) = Store(folder / "results", "across").run_ids()
    return folder / "results" / "across" / rid


def rank_process(rank: int, slurm_conf: str) -> int | None:
    """The pid of the python process of this cluster's task of global rank `rank` (not its srun)."""
    marks = {f"SLURM_CONF={slurm_conf}".encode(), f"SLURM_PROCID={rank}".encode()}
    for proc in Path("/proc").iterdir():
        try:
            if (proc / "comm").read_text().startswith("python") and \
                    b"submitit.core._submit" in (proc / "cmdline").read_bytes() and \
                    marks <= set((proc / "environ").read_bytes().split(b"\0")):
                return int(proc.name)
        except (OSError, ValueError):
            continue
    return None


def test_a_run_across_two_nodes_trains_like_two_local_ddp_processes(two_nodes, uninterrupted, tmp_path):
    metrics = json.loads((uninterrupted / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    job = json.loads((uninterrupted / "status.json").read_text())["job_id"]
    nodes = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "NodeList"], capture_output=True, text=True,
                           env={**os.environ, **two_nodes}).stdout.split()
    assert nodes == ["node[1-2]"]
    logs = (uninterrupted.parent / ".slurm" / f"{job}_1_log.out").read_text()
    assert "hostname=node2" in logs and "global_rank=1(2)" in logs  # rank 1 ran on the other node
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                               "--master-port", str(free_port()), "-m", "protoseg.engine", "--spec",
                               str(uninterrupted / "spec.yaml"), "--out", str(tmp_path / "torchrun")],
                              cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    same_results(uninterrupted, tmp_path / "torchrun")


def test_kill_9_of_one_nodes_task_crashes_the_run_and_it_resumes_to_the_same_weights(two_nodes, uninterrupted,
                                                                                      tmp_path):
    path, results = experiment(tmp_path, "killed"), tmp_path / "results"
    env = {**os.environ, **two_nodes}
    driver = subprocess.Popen(harness_command("run", path, results=results), cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    while not list(results.glob("killed/*/checkpoints/iter_00000005.pt")):
        assert driver.poll() is None and time.time() < deadline, "no checkpoint before the kill"
        time.sleep(0.1)
    pid = rank_process(1, two_nodes["SLURM_CONF"])
    assert pid is not None, "rank 1's process not found"
    os.kill(pid, signal.SIGKILL)
    out, err = driver.communicate(timeout=TIMEOUT)
    store = Store(results, "killed")
    (rid,) = store.run_ids()
    status = store.status(rid)
    assert driver.returncode == 1 and store.state(rid) == "crashed", out + err
    assert "another process of this DDP run is gone" in status["error"], status
    assert not (store.run_dir(rid) / "error.txt").exists()

    again = run_harness("run", path, results=results, timeout=TIMEOUT, env=two_nodes)
    assert again.returncode == 0, again.stdout + again.stderr
    status = store.status(rid)
    assert status["attempts"] == 2 and status["resumed"] is True
    assert "resumed from iteration" in (store.run_dir(rid) / "train.log").read_text()
    same_results(store.run_dir(rid), uninterrupted)
    a, b = (torch.load(sorted((d / "checkpoints").glob("iter_*.pt"))[-1], weights_only=True)["model"]
            for d in (store.run_dir(rid), uninterrupted))
    assert all(torch.equal(a[k], b[k]) for k in a)
