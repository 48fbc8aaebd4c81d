"""A run resumed with another thread count keeps its first attempt's, so it ends as if never interrupted."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, tiny_spec
from harness.store import Store
from protoseg import checkpoint


def _prepared(results: Path, run_id: str, **train) -> Path:
    # threads None: the worker's --threads decides, as under the local backend
    spec = tiny_spec(train={"iterations": 8, "checkpoint_interval": 2, "progress": False, "threads": None, **train})
    store = Store(results, "threads")
    store.prepare(run_id, spec, {})
    return store.run_dir(run_id)


def _worker(run_dir: Path, threads: int) -> list[str]:
    return [sys.executable, "-m", "harness.worker", str(run_dir), "--threads", str(threads)]


def _start_until_checkpoint(run_dir: Path, threads: int) -> subprocess.Popen:
    proc = subprocess.Popen(_worker(run_dir, threads), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "iter_00000002.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    return proc


@pytest.mark.slow
def test_a_run_killed_and_resumed_with_two_threads_ends_as_one_with_one(tmp_path):
    results = tmp_path / "results"
    whole, killed = _prepared(results, "whole"), _prepared(results, "killed")
    subprocess.run(_worker(whole, 1), cwd=ROOT, check=True, timeout=300, stdin=subprocess.DEVNULL,
                   capture_output=True)

    proc = _start_until_checkpoint(killed, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    resumed = subprocess.run(_worker(killed, 2), cwd=ROOT, timeout=300, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    a, b = checkpoint.load_latest(whole)["model"], checkpoint.load_latest(killed)["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    whole_m, killed_m = (json.loads((d / "metrics.json").read_text()) for d in (whole, killed))
    assert killed_m["mIoU"] == whole_m["mIoU"] and killed_m["history"] == whole_m["history"]
    assert killed_m["threads"] == whole_m["threads"] == 1
    log = (killed / "train.log").read_text()
    assert "keeps 1 thread(s) of its first attempt for an exact resume (this attempt was given 2)" in log


@pytest.mark.slow
def test_sighup_stops_the_worker_at_a_checkpoint(tmp_path):
    run_dir = _prepared(tmp_path / "results", "hup", iterations=200)
    proc = _start_until_checkpoint(run_dir, 1)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(120) == 143
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "cancelled" and "checkpoint saved" in status["error"]
    assert checkpoint.load_latest(run_dir)["iteration"] < 200
