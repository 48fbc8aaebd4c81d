"""A run resumed with another thread count keeps its first attempt's, so it ends as if never interrupted."""
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, kill_at, tiny_spec, wait_for_file
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


def _start(run_dir: Path, threads: int) -> subprocess.Popen:
    return subprocess.Popen(_worker(run_dir, threads), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_a_run_killed_and_resumed_with_two_threads_ends_as_one_with_one(tmp_path):
    results = tmp_path / "results"
    whole, killed = _prepared(results, "whole"), _prepared(results, "killed")
    subprocess.run(_worker(whole, 1), cwd=ROOT, check=True, timeout=300, stdin=subprocess.DEVNULL,
                   capture_output=True)

    kill_at(_start(killed, 1), killed / "checkpoints" / "iter_00000002.pt")
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
    proc = _start(run_dir, 1)
    wait_for_file(proc, run_dir / "checkpoints" / "iter_00000002.pt")
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(120) == 143
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "cancelled" and "checkpoint saved" in status["error"]
    assert checkpoint.load_latest(run_dir)["iteration"] < 200
