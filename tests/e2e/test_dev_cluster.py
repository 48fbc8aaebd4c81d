"""slurm/dev-cluster brings up a real single-node SLURM with accounting, and takes it down again."""
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, needs_dev_slurm

SCRIPT = ROOT / "slurm" / "dev-cluster"
pytestmark = [pytest.mark.slow, needs_dev_slurm]


def cli(*args, env=None, timeout=300):
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def folder():
    # not under pytest's tmp_path: that is private (mode 700) and munged runs as user munge
    path = Path(tempfile.mkdtemp(prefix="devslurm-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_private_folder_is_refused_with_a_reason(tmp_path):
    up = cli("up", tmp_path / "slurm")
    assert up.returncode != 0 and "user munge cannot reach" in up.stderr
    cli("down", tmp_path / "slurm", timeout=120)


def test_up_sbatch_sacct_down(folder):
    up = cli("up", folder)
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == f"export SLURM_CONF={folder}/slurm.conf"
        env = {**os.environ, "SLURM_CONF": f"{folder}/slurm.conf"}
        again = cli("up", folder, env=env)
        assert again.returncode == 0 and "already up" in again.stderr and again.stdout == up.stdout
        sbatch = ["sbatch", "--parsable", "--output", f"{folder}/job-%j.out", "--wrap", "true"]  # not into the cwd
        job = subprocess.run(sbatch, env=env, capture_output=True, text=True, check=True).stdout.strip()
        deadline = time.time() + 60
        while True:
            state = subprocess.run(["sacct", "-n", "-X", "-j", job, "-o", "State"], env=env, capture_output=True,
                                   text=True).stdout.strip()
            if state == "COMPLETED":
                break
            assert time.time() < deadline, f"job {job} is {state!r} after 60 s"
            time.sleep(0.5)
        assert cli("status", folder).returncode == 0
    finally:
        down = cli("down", folder, timeout=120)
    assert down.returncode == 0, down.stderr
    assert cli("status", folder).returncode == 1
    pids = [p for p in folder.rglob("*.pid") if p.read_text().strip().isdigit()]
    assert not [p for p in pids if os.path.exists(f"/proc/{p.read_text().strip()}/cmdline")
                and open(f"/proc/{p.read_text().strip()}/stat").read().split()[2] != "Z"]
