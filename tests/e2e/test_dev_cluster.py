"""slurm/dev-cluster brings up a real single-node SLURM with accounting, and takes it down again."""
import os
import shutil
import socket
import subprocess
import sys
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


def test_two_nodes_each_with_its_own_hostname_and_address(folder):
    up = cli("up", folder, "--nodes", "2")
    env = {**os.environ, "SLURM_CONF": f"{folder}/slurm.conf"}
    try:
        assert up.returncode == 0, up.stderr
        nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=env, capture_output=True, text=True)
        assert nodes.stdout.split() == ["node1", "idle", "node2", "idle"]
        probe = ("import socket, os; print(socket.gethostname(), os.environ['SLURM_NODEID'], "
                 "socket.gethostbyname('node1'), socket.gethostbyname('node2'))")
        both = subprocess.run(["srun", "-N2", "-n2", "-l", sys.executable, "-c", probe], env=env, cwd=folder,
                              capture_output=True, text=True, timeout=120)
        assert both.returncode == 0, both.stderr
        lines = sorted(line.split(": ", 1)[1].split() for line in both.stdout.splitlines())
        assert [line[:2] for line in lines] == [["node1", "0"], ["node2", "1"]]
        addresses = {tuple(line[2:]) for line in lines}
        assert len(addresses) == 1 and len(set(addresses.pop())) == 2  # both nodes agree, two addresses
        assert socket.gethostname() not in ("node1", "node2")  # the host keeps its own name
        assert "slurmd@node2" in cli("status", folder).stdout
        net = dict(line.split("=", 1) for line in (folder / "nodes.env").read_text().split())
        assert net["NODES"] == "2"
    finally:
        down = cli("down", folder, timeout=120)
    assert down.returncode == 0, down.stderr
    made = f"dc{net['NET_ID']}"  # the prefix of every namespace, veth and bridge of this DIR
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert made not in links + spaces and not Path(f"/etc/netns/{made}n1").exists()
    assert net["SUBNET"] + "." not in subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    assert cli("status", folder).returncode == 1


@pytest.mark.parametrize("nodes", ["0", "10", "two"])
def test_a_node_count_out_of_range_is_refused(folder, nodes):
    up = cli("up", folder, "--nodes", nodes)
    assert up.returncode != 0 and "--nodes takes a number of nodes from 1 to 9" in up.stderr
