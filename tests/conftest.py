import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/reference_official.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_spec(**sections) -> dict:
    """A run spec small enough to train in seconds on a CPU."""
    spec = {
        "model": {"backbone": "resnet18", "prototype": {"num_prototypes": 2}},
        "data": {"crop_size": [64, 64], "batch_size": 2,
                 "synthetic": {"image_size": [64, 64], "num_train": 8, "num_val": 4}},
        "train": {"iterations": 6, "checkpoint_interval": 2, "log_interval": 1, "progress": False,
                  "threads": 1},
        "eval": {"complexity_size": [64, 64], "fps_images": 2, "fps_warmup": 1},
    }
    for name, values in sections.items():
        spec[name].update(values)
    return spec


def tiny_experiment(folder: Path, name: str, axes: dict, include, iterations: int, executor: dict,
                    **train) -> Path:
    """An experiment file over tiny_spec() runs: small decoder, a checkpoint every 2 iterations."""
    import yaml

    base = tiny_spec()
    base["model"]["decoder_channels"] = 32  # small decoder: fast steps, small checkpoints
    base["train"].update({"iterations": iterations, "checkpoint_interval": 2, "keep_checkpoints": 1, **train})
    doc = {"sweep": name, "base": base, "matrix": axes, "executor": executor}
    if include:
        doc["include"] = include
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def harness_command(*args, results: Path) -> list[str]:
    """`harness ARGS --results RESULTS` as the installed CLI runs it."""
    return [sys.executable, "-m", "harness.cli", *map(str, args), "--results", str(results)]


def run_harness(*args, results: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(harness_command(*args, results=results), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def start_harness(path: Path, results: Path, *extra) -> subprocess.Popen:
    """`harness run PATH` in its own process group, as a shell job is, with Ctrl-C's SIGINT at its default
    even when these tests run in a background job of a script (which ignores SIGINT, and so would it)."""
    return subprocess.Popen(harness_command("run", path, *extra, results=results), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def spec():
    return tiny_spec()


def _dev_slurm_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "slurm/dev-cluster needs root"
    if not (shutil.which("slurmctld") or shutil.which("apt-get")):
        return "neither SLURM nor apt-get to install it is here"
    return None


needs_dev_slurm = pytest.mark.skipif(_dev_slurm_unavailable() is not None, reason=_dev_slurm_unavailable() or "")


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real single-node SLURM (slurm/dev-cluster) for the session; SLURM_CONF is set while it lives."""
    # not under pytest's tmp_path: that is private (mode 700) and munged runs as user munge
    folder = Path(tempfile.mkdtemp(prefix="devslurm-", dir="/tmp"))
    script = ROOT / "slurm" / "dev-cluster"
    up = subprocess.run([str(script), "up", str(folder)], capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        pytest.fail(f"slurm/dev-cluster up failed:\n{up.stderr}")
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    try:
        yield folder
    finally:
        subprocess.run([str(script), "down", str(folder)], capture_output=True, timeout=300)
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        shutil.rmtree(folder, ignore_errors=True)


def free_port() -> int:
    """A TCP port nobody listens on now (a rendezvous for torchrun or a DDP test)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def same_results(a: Path, b: Path) -> None:
    """Two run folders trained the same: confusion matrix and loss history identical."""
    import numpy as np

    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert np.array_equal(np.array(ma["confusion"]), np.array(mb["confusion"]))
    assert [h["loss"] for h in ma["history"]] == [h["loss"] for h in mb["history"]]


def wait_for_file(proc: subprocess.Popen, path: Path, timeout: float = 120) -> None:
    """Wait until `path` exists while `proc` runs (e.g. a run's first checkpoint)."""
    import time

    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, f"the process ended before {path.name} appeared"
        time.sleep(0.05)


def kill_at(proc: subprocess.Popen, checkpoint: Path, timeout: float = 120) -> None:
    """SIGKILL `proc` as soon as `checkpoint` exists (a real kill mid-run)."""
    import signal

    wait_for_file(proc, checkpoint, timeout)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture
def fake_srun(tmp_path, monkeypatch):
    """An `srun` on PATH: submitit renders an sbatch file only where one exists."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
