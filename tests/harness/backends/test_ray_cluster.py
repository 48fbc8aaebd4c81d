"""The Ray backend on a real two-node Ray cluster of this machine (ray/dev-cluster): trials spread over
both nodes, and a node that dies mid-sweep loses no finished run while its unfinished trial finishes
on the head from its checkpoint. The tests share one cluster and run in file order: the last one
kills node 1."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_harness, start_harness, tiny_experiment
from harness import matrix
from harness.store import Store

pytest.importorskip("ray", reason="ray is not installed")
pytestmark = pytest.mark.slow

SCRIPT = ROOT / "ray" / "dev-cluster"
ENV = {**os.environ, "DEV_RAY_BIN": str(Path(sys.executable).with_name("ray")),
       # the GCS calls a node dead after 3 missed health checks 1 s apart (Ray's default: 5 of 3 s)
       "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def dev_cluster(*args, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV)


def node_ids(folder: Path) -> dict[int, str]:
    """{node number: Ray node id} of the nodes up, from `dev-cluster status`."""
    lines = dev_cluster("status", folder).stdout.splitlines()
    return {int(w[0][4:]): w[2] for w in (line.split() for line in lines) if w[0].startswith("node") and w[1] == "up"}


@pytest.fixture(scope="module")
def cluster():
    """(folder, head address, {node number: node id}) of a 2-node Ray; down (and checked empty) at the end.
    While it lives, the environment has the variables `up` exports (the address and the cluster's token)."""
    folder = Path(tempfile.mkdtemp(prefix="devray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    before = dict(os.environ)
    try:
        up = dev_cluster("up", folder, "--nodes", 2)
        assert up.returncode == 0, up.stderr
        exported = dict(item.split("=", 1) for item in up.stdout.split()[1:])  # export K=V K=V ...
        os.environ.update(exported)
        ids = node_ids(folder)
        assert sorted(ids) == [0, 1] and ids[0] != ids[1], ids
        yield folder, exported["RAY_ADDRESS"], ids
    finally:
        os.environ.clear()
        os.environ.update(before)
        down = dev_cluster("down", folder)
        assert down.returncode == 0, down.stderr
        assert "up" not in dev_cluster("status", folder).stdout  # nothing of either node is left
        shutil.rmtree(folder, ignore_errors=True)


def experiment(folder: Path, name: str, seeds: int, iterations: int) -> tuple[Path, list[str]]:
    path = tiny_experiment(folder, name, {"model.head": ["nonparametric"], "train.seed": list(range(seeds))}, None,
                           iterations, {"backend": "ray", "jobs": 2})
    return path, [r.run_id for r in matrix.load(path).runs]


def test_trials_spread_over_both_nodes(tmp_path, cluster):
    folder, address, ids = cluster
    path, runs = experiment(tmp_path, "spread", seeds=2, iterations=4)  # 1 CPU a node: one trial on each
    proc = run_harness("run", path, "--backend", "ray", "--address", address, results=tmp_path / "results")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"connected to the Ray cluster at {address} (2 CPUs)" in proc.stderr
    store = Store(tmp_path / "results", "spread")
    assert all(store.is_done(rid) for rid in runs)
    assert {store.status(rid)["ray_node"] for rid in runs} == {ids[0], ids[1]}


def test_a_client_without_the_clusters_token_is_told_so(tmp_path, cluster):
    folder, address, ids = cluster
    path, runs = experiment(tmp_path, "token", seeds=1, iterations=2)
    (tmp_path / "other_token").write_text("0" * 64)
    proc = run_harness("run", path, "--backend", "ray", "--address", address, results=tmp_path / "results",
                       env={"RAY_AUTH_TOKEN_PATH": str(tmp_path / "other_token")})  # Ray tries for about 20 s
    assert proc.returncode == 3
    assert f"cannot join the Ray cluster at {address}" in proc.stderr and "RAY_AUTH_TOKEN_PATH" in proc.stderr
    store = Store(tmp_path / "results", "token")
    assert store.claim_info(runs[0]) is None and not store.is_done(runs[0])  # claim given back


def test_a_node_that_dies_mid_sweep_loses_no_finished_run(tmp_path, cluster):
    folder, address, ids = cluster
    iterations = 12
    path, runs = experiment(tmp_path, "nodeloss", seeds=4, iterations=iterations)
    results = tmp_path / "results"
    store = Store(results, "nodeloss")
    driver = start_harness(path, results, "--backend", "ray", "--address", address)
    try:
        deadline = time.time() + 240
        while True:  # node 1 has finished a run and is part way through another, past a checkpoint
            on_1 = [rid for rid in runs if store.status(rid).get("ray_node") == ids[1]]
            done_on_1 = [rid for rid in on_1 if store.is_done(rid)]
            busy = [rid for rid in on_1 if not store.is_done(rid) and store.has_checkpoint(rid)
                    and json.loads((store.run_dir(rid) / "progress.json").read_text())["iteration"] < iterations - 6]
            if done_on_1 and busy:
                break
            assert driver.poll() is None, "the sweep ended before node 1 was killed"
            assert time.time() < deadline, "node 1 never ran a second run"
            time.sleep(0.2)
        done = {rid: ((store.run_dir(rid) / "metrics.json").stat().st_mtime, store.status(rid))
                for rid in runs if store.is_done(rid)}
        killed = dev_cluster("kill", folder, 1)
        assert killed.returncode == 0, killed.stderr
        assert 1 not in node_ids(folder)
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, err[-3000:]
    assert all(store.is_done(rid) for rid in runs), out + err[-3000:]
    for rid, (mtime, status) in done.items():  # finished before the kill: neither lost nor trained again
        assert (store.run_dir(rid) / "metrics.json").stat().st_mtime == mtime, rid
        assert store.status(rid)["attempts"] == status["attempts"] == 1, rid
    resumed = busy[0]
    status = store.status(resumed)
    assert status["attempts"] == 2 and status["resumed"] is True and status["ray_node"] == ids[0]
    assert "resumed from iteration" in (store.run_dir(resumed) / "train.log").read_text()
    history = json.loads((store.run_dir(resumed) / "metrics.json").read_text())["history"]
    assert [h["iteration"] for h in history] == list(range(1, iterations + 1))
    for rid in set(runs) - set(done):  # everything unfinished at the kill ended on the surviving head
        assert store.status(rid)["ray_node"] == ids[0], rid
