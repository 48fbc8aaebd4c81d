"""Checkpoints load as tensors and plain data only: a planted one runs no code; old ones still load."""
import json
import os
import pickle
import random
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, kill_at, tiny_spec
from protoseg import checkpoint


class Planted:
    """Unpickled, it would run a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _engine(spec_file: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "protoseg.engine", "--spec", str(spec_file), "--out", str(out)]


@pytest.mark.slow
def test_a_planted_checkpoint_runs_no_code_and_the_run_resumes_exactly(tmp_path):
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec(train={"iterations": 8, "checkpoint_interval": 2,
                                                         "progress": False, "threads": 1})))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(_engine(spec_file, tmp_path / "whole"), check=True, env=env, cwd=ROOT, capture_output=True)

    run = tmp_path / "run"
    proc = subprocess.Popen(_engine(spec_file, run), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_at(proc, run / "checkpoints" / "iter_00000002.pt")
    marker = tmp_path / "marker"
    planted = Planted(f"touch {shlex.quote(str(marker))}")
    torch.save({"model": planted}, run / "checkpoints" / "iter_99999999.pt")  # a torch.save file
    (run / "checkpoints" / "iter_99999998.pt").write_bytes(pickle.dumps(planted, protocol=2))  # a bare pickle

    done = subprocess.run(_engine(spec_file, run), env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    log = (run / "train.log").read_text()
    assert "resumed from iteration" in log
    assert f"checkpoint {run / 'checkpoints' / 'iter_99999999.pt'} is unreadable (loading it would call " \
           f"posix.system" in log
    assert f"checkpoint {run / 'checkpoints' / 'iter_99999998.pt'} is unreadable" in log
    assert "iter_99999999.pt is unreadable" in done.stderr  # the console shows warnings too

    whole_m, run_m = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", run))
    assert run_m["mIoU"] == whole_m["mIoU"] and run_m["history"] == whole_m["history"]
    a, b = checkpoint.load_latest(tmp_path / "whole")["model"], checkpoint.load_latest(run)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not marker.exists()


def test_a_checkpoint_of_the_previous_format_still_loads(tmp_path):
    """The previous version saved numpy's random state as it comes, with a uint32 array in it."""
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    old_rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"model": {"w": torch.ones(2)}, "history": [{"loss": 1.0}], "iteration": 4, "rng": old_rng},
               folder / "iter_00000004.pt")
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(folder / "iter_00000004.pt")

    state = checkpoint.load_latest(tmp_path)
    assert state["iteration"] == 4 and torch.equal(state["model"]["w"], torch.ones(2))
    checkpoint.set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_new_checkpoints_need_no_allowlist(tmp_path):
    np.random.seed(5)
    path = checkpoint.save(tmp_path, 2, {"model": {"w": torch.zeros(1)}}, keep=2)
    expected = np.random.rand()
    state = torch.load(path, weights_only=True)  # no numpy global allowed here
    checkpoint.set_rng_state(state["rng"])
    assert np.random.rand() == expected


def test_an_old_array_of_another_dtype_is_refused(tmp_path):
    """Only what numpy's random state needs is allowed: a float or object array is not."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"iteration": 2, "x": np.zeros(3, dtype=np.uint32)}, folder / "iter_00000002.pt")
    torch.save({"iteration": 4, "x": np.array([Planted("true")], dtype=object)}, folder / "iter_00000004.pt")
    torch.save({"iteration": 6, "x": np.zeros(3)}, folder / "iter_00000006.pt")
    assert checkpoint.load_latest(tmp_path)["iteration"] == 2
