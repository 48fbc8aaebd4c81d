"""The Ray backend against a real local Ray (2 CPUs)."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, tiny_spec
from harness import matrix
from harness.store import Store

ray = pytest.importorskip("ray", reason="ray is not installed")
pytestmark = pytest.mark.slow


def write_experiment(folder: Path, name: str, iterations: int = 4, heads=("parametric", "nonparametric"),
                     prototypes=(1, 2), backend: str = "ray") -> Path:
    base = tiny_spec(train={"iterations": iterations, "checkpoint_interval": 2, "log_interval": 1,
                            "progress": False})
    base["model"]["decoder_channels"] = 32
    doc = {"sweep": name, "base": base,
           "matrix": {"model.head": list(heads), "model.prototype.num_prototypes": list(prototypes), "train.seed": [0, 1]},
           "executor": {"backend": backend, "jobs": 2}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def harness(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, **kw)


def metrics(store: Store, rid: str) -> dict:
    return json.loads((store.run_dir(rid) / "metrics.json").read_text())


def test_a_sweep_on_ray_matches_the_local_backend(tmp_path):
    # 2 parametric seeds + 2 nonparametric seeds (M=2): 4 cells
    path = write_experiment(tmp_path, "same", heads=("parametric", "nonparametric"), prototypes=(2,))
    ids = [r.run_id for r in matrix.load(path).runs]
    assert len(ids) == 4
    on_ray = harness("run", path, "--results", tmp_path / "ray")
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    assert "started a local Ray" in on_ray.stderr
    local = harness("run", path, "--results", tmp_path / "local", "--backend", "local")
    assert local.returncode == 0, local.stderr[-3000:]
    ray_store, local_store = Store(tmp_path / "ray", "same"), Store(tmp_path / "local", "same")
    for rid in ids:
        a, b = metrics(ray_store, rid), metrics(local_store, rid)
        assert a["confusion"] == b["confusion"] and a["history"] == b["history"], rid
        assert ray_store.status(rid)["backend"] == "ray" and local_store.status(rid)["backend"] == "local"
    assert (tmp_path / "ray" / "same" / ".ray").is_dir()  # Tune's storage lives under the sweep


def crash_once(config):
    """A trainable that dies on its first try after a checkpoint exists, then behaves (Ray's marker-file trick)."""
    import threading

    from harness.backends.ray import attempt
    from harness.worker import execute

    run_dir = Path(config["run"]["run_dir"])
    marker = run_dir / "crashed-once"
    if marker.exists():
        return attempt(config)
    stop = threading.Event()
    watcher = threading.Thread(target=lambda: _stop_at_checkpoint(run_dir, stop), daemon=True)
    watcher.start()
    execute(run_dir, backend="ray", stop=stop, token=config["token"])  # stops at the first checkpoint
    marker.write_text("")
    raise RuntimeError("simulated crash of the trial")


def _stop_at_checkpoint(run_dir: Path, stop):
    while not list((run_dir / "checkpoints").glob("iter_*.pt")):
        time.sleep(0.05)
    stop.set()


def test_a_trial_that_crashes_is_retried_and_resumes_from_its_checkpoint(tmp_path):
    import ray.cloudpickle

    from harness.backends import ray as ray_backend

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    path = write_experiment(tmp_path, "crash", iterations=6, heads=("nonparametric",), prototypes=(2,))
    sweep = matrix.load(path)
    store = Store(tmp_path / "results", "crash")
    run = sweep.runs[0]
    store.prepare(run.run_id, run.spec, run.settings)
    final = ray_backend.run(store, [run], {**sweep.executor, "max_failures": 1}, progress=False,
                            trainable=crash_once)
    assert final == {run.run_id: "done"}
    assert (store.run_dir(run.run_id) / "crashed-once").exists()
    assert "resumed from iteration" in (store.run_dir(run.run_id) / "train.log").read_text()
    assert store.status(run.run_id)["attempts"] == 2
    history = metrics(store, run.run_id)["history"]
    assert [h["iteration"] for h in history] == list(range(1, 7))


def test_killing_the_driver_then_running_again_repeats_no_finished_cell(tmp_path):
    path = write_experiment(tmp_path, "killed", iterations=30, heads=("nonparametric",), prototypes=(2,))
    doc = yaml.safe_load(path.read_text())
    doc["executor"]["jobs"] = 1
    doc["matrix"]["train.seed"] = [0, 1]
    path.write_text(yaml.safe_dump(doc))
    results = tmp_path / "results"
    store = Store(results, "killed")
    ids = [r.run_id for r in matrix.load(path).runs]
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(path), "--results", str(results)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 240
    while True:  # one run done, the other (one trial at a time) part way
        done = [rid for rid in ids if store.is_done(rid)]
        if len(done) == 1 and list((store.run_dir(*set(ids) - set(done)) / "checkpoints").glob("iter_*.pt")):
            break
        assert driver.poll() is None and time.time() < deadline, "the sweep ended before the driver was killed"
        time.sleep(0.2)
    first, second = done[0], next(rid for rid in ids if rid != done[0])
    done_at = (store.run_dir(first) / "metrics.json").stat().st_mtime
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    try:
        gone = time.time() + 60  # the trial notices its driver is gone and stops at a checkpoint
        while store.state(second) == "running":
            assert time.time() < gone, "the trial outlived its driver"
            time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)  # whatever else Ray left in the driver's session
    assert not store.is_done(second)
    again = harness("run", path, "--results", results)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{first}" in again.stdout and "skip (done)" in again.stdout
    assert store.is_done(second), again.stdout + again.stderr[-2000:]
    assert (store.run_dir(first) / "metrics.json").stat().st_mtime == done_at
    assert "resumed from iteration" in (store.run_dir(second) / "train.log").read_text()
    history = metrics(store, second)["history"]
    assert [h["iteration"] for h in history] == list(range(1, 31))


def test_an_unreachable_address_fails_fast_with_a_clear_message(tmp_path):
    path = write_experiment(tmp_path, "nowhere")
    start = time.time()
    proc = harness("run", path, "--results", tmp_path / "results", "--address", "127.0.0.1:9", timeout=60)
    assert time.time() - start < 30
    assert proc.returncode == 3
    assert "no Ray cluster at 127.0.0.1:9" in proc.stderr
    store = Store(tmp_path / "results", "nowhere")
    assert all(store.claim_info(rid) is None for rid in store.run_ids())  # claims given back


def test_address_joins_an_existing_cluster_and_says_so(tmp_path):
    ray_cli = Path(sys.executable).with_name("ray")
    port = 6399
    start = subprocess.run([str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=2",
                            "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr
    try:
        path = write_experiment(tmp_path, "joined", heads=("parametric",))
        doc = yaml.safe_load(path.read_text())
        doc["matrix"]["train.seed"] = [0]
        path.write_text(yaml.safe_dump(doc))
        proc = harness("run", path, "--results", tmp_path / "results", "--address", "auto")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "connected to the Ray cluster at auto (2 CPUs)" in proc.stderr
        store = Store(tmp_path / "results", "joined")
        assert all(store.is_done(rid) for rid in store.run_ids())
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, timeout=120)
