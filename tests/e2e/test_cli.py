"""`harness run | status | report` end to end: the real CLI in subprocesses on a
tiny synthetic sweep. What a user relies on: the same command after a crash
continues where it stopped and never repeats finished work; two harnesses on
one sweep never run a cell twice; a failing cell is recorded and does not stop
the others; a bad experiment file starts nothing."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, harness_command, run_harness, tiny_experiment, tiny_spec
from harness import matrix
from harness.store import Store

TIMEOUT = 240  # seconds for one CLI call (two cores, shared)


def write_experiment(folder: Path, name: str, matrix_axes=None, include=None, jobs=2, iterations=4,
                     **train) -> Path:
    axes = matrix_axes if matrix_axes is not None else {"model.head": ["parametric", "nonparametric"],
                                                        "model.prototype.num_prototypes": [1, 2]}
    return tiny_experiment(folder, name, axes, include, iterations, {"backend": "local", "jobs": jobs}, **train)


def harness(*args, results: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return run_harness(*args, results=results, timeout=timeout)


def plan(stdout: str) -> dict[str, str]:
    """run id -> action, from the plan lines `  <run_id>  <settings>  <action>`."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if line.startswith("  ") and parts and is_run_id(parts[0]):
            for action in ("skip (done)", "skip (running elsewhere)", "skip (failed; --retry-failed)",
                           "resume", "rerun", "run"):
                if line.rstrip().endswith(action):
                    out.setdefault(parts[0], action)
                    break
    return out


def is_run_id(token: str) -> bool:
    return len(token) == 12 and all(c in "0123456789abcdef" for c in token)


def finished(stdout: str) -> list[tuple[str, str]]:
    """(state, run id) of the backend's lines `  <state>  <run_id>  ...` as runs end."""
    out = []
    for line in stdout.splitlines():
        words = line.split()
        if not line.startswith("  ") or not words or is_run_id(words[0]):
            continue  # not indented, or a plan line (it starts with the run id)
        for i, word in enumerate(words[1:], 1):
            if is_run_id(word):
                out.append((" ".join(words[:i]), word))
                break
    return out


def mtimes(sweep_dir: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*/metrics.json")}


def attempts(store: Store) -> dict[str, int]:
    return {rid: store.status(rid).get("attempts") for rid in store.run_ids()}


def children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the harness ended (rc {proc.returncode}) before {what}")
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


# ---- one finished sweep, shared by the quick checks -------------------------------------

@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    path = write_experiment(folder, "tiny")
    results = folder / "results"
    proc = harness("run", path, results=results)
    return {"path": path, "results": results, "proc": proc, "store": Store(results, "tiny"),
            "ids": [r.run_id for r in matrix.load(path).runs]}


@pytest.mark.slow
def test_run_completes_every_cell(sweep):
    proc, store = sweep["proc"], sweep["store"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(sweep["ids"]) == 3  # 2 heads x 2 prototype counts; the parametric cells collapse
    assert sorted(store.run_ids()) == sorted(sweep["ids"])
    for rid in sweep["ids"]:
        folder = store.run_dir(rid)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert 0 <= metrics["mIoU"] <= 100
        status = store.status(rid)
        assert status["state"] == "done" and status["attempts"] == 1 and status["mIoU"] == metrics["mIoU"]
        assert not (folder / "claim").exists()  # released
        assert (folder / "spec.yaml").exists() and (folder / "train.log").exists()
    assert plan(proc.stdout) == {rid: "run" for rid in sweep["ids"]}
    assert sorted(rid for state, rid in finished(proc.stdout) if state == "done") == sorted(sweep["ids"])
    # the table of the sweep is printed at the end
    assert "parametric" in proc.stdout and "ProtoSeg" in proc.stdout and "ProtoSeg M=2" in proc.stdout
    assert "3 run(s)" in proc.stdout and "3 done" in proc.stdout
    info = json.loads((store.dir / "sweep.json").read_text())
    assert sorted(info["run_ids"]) == sorted(sweep["ids"]) and len(info["invocations"]) == 1


@pytest.mark.slow
def test_run_again_runs_nothing_and_touches_no_result(sweep):
    before = mtimes(sweep["store"].dir)
    assert len(before) == 3
    proc = harness("run", sweep["path"], results=sweep["results"])
    assert proc.returncode == 0, proc.stderr
    assert plan(proc.stdout) == {rid: "skip (done)" for rid in sweep["ids"]}
    assert "nothing to run" in proc.stdout
    assert "ProtoSeg" in proc.stdout  # the table is still shown
    assert mtimes(sweep["store"].dir) == before
    assert set(attempts(sweep["store"]).values()) == {1}


@pytest.mark.slow
def test_dry_run_lists_the_plan_and_starts_nothing(sweep, tmp_path):
    fresh = tmp_path / "results"
    proc = harness("run", sweep["path"], "--dry-run", results=fresh)
    assert proc.returncode == 0, proc.stderr
    assert plan(proc.stdout) == {rid: "run" for rid in sweep["ids"]}
    assert "dry run: 3 would run" in proc.stdout
    assert not fresh.exists()  # no folder, no claim, no status
    # on the finished sweep: nothing would run, nothing is written
    before = {p: p.stat().st_mtime_ns for p in sweep["store"].dir.rglob("*") if p.is_file()}
    proc = harness("run", sweep["path"], "--dry-run", results=sweep["results"])
    assert "dry run: 0 would run" in proc.stdout
    after = {p: p.stat().st_mtime_ns for p in sweep["store"].dir.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.slow
def test_dry_run_only_selects_cells(sweep, tmp_path):
    proc = harness("run", sweep["path"], "--dry-run", "--only", "model.head=parametric", results=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert list(plan(proc.stdout).values()) == ["run"]
    assert "3 cells, 1 selected" in proc.stdout
    proc = harness("run", sweep["path"], "--dry-run", "--only", "model.haed=parametric", results=tmp_path)
    assert proc.returncode == 2 and "model.haed" in proc.stderr


@pytest.mark.slow
def test_status_prints_one_line_per_run_and_a_summary(sweep):
    for target in ([], [sweep["path"]], ["tiny"]):
        proc = harness("status", *target, results=sweep["results"])
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.strip().splitlines()
        assert lines[0].startswith("sweep tiny")
        runs = [line for line in lines if line.split() and line.split()[0] in sweep["ids"]]
        assert len(runs) == 3 and all(" done " in line and "mIoU" in line for line in runs)
        assert lines[-1] == "3 runs: 3 done"


@pytest.mark.slow
def test_status_of_an_unknown_sweep_names_the_known_ones(sweep):
    proc = harness("status", "tinny", results=sweep["results"])
    assert proc.returncode == 2
    assert "tinny" in proc.stderr and "tiny" in proc.stderr.split("known:")[1]


@pytest.mark.slow
def test_report_formats(sweep, tmp_path):
    results = sweep["results"]
    md = harness("report", "tiny", "--format", "md", results=results)
    assert md.returncode == 0, md.stderr
    assert "| Backbone" in md.stdout and "synthetic mIoU" in md.stdout
    assert "parametric" in md.stdout and "ProtoSeg M=1" in md.stdout

    latex = harness("report", "tiny", "--format", "latex", results=results)
    assert latex.returncode == 0, latex.stderr
    assert "\\toprule" in latex.stdout and "\\bottomrule" in latex.stdout and "\\textbf{" in latex.stdout
    assert latex.stdout.count("\\textbf{") == 1  # the best mIoU of the one dataset column

    csv = harness("report", "tiny", "--format", "csv", "--out", tmp_path / "t.csv", results=results)
    assert csv.returncode == 0, csv.stderr
    import pandas as pd

    table = pd.read_csv(tmp_path / "t.csv")
    assert len(table) == 3 and {"mIoU_mean", "method", "data.dataset"} <= set(table.columns)
    metrics = {json.loads((sweep["store"].run_dir(rid) / "metrics.json").read_text())["mIoU"]
               for rid in sweep["ids"]}
    assert set(table["mIoU_mean"].round(4)) == {round(m, 4) for m in metrics}


@pytest.mark.slow
def test_report_plots_writes_six_pngs(sweep, tmp_path):
    out = tmp_path / "figures"
    proc = harness("report", "--plots", out, results=sweep["results"])
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["miou_vs_prototypes.png", "per_class_iou.png", "predictions.png", "prototype_diagnostics.png",
                     "tensorboard_scalars.png", "training_curves.png"]
    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_report_without_results_says_so(tmp_path):
    proc = harness("report", results=tmp_path / "empty")
    assert proc.returncode == 1 and "no finished runs" in proc.stderr


# ---- failures ----------------------------------------------------------------------------

@pytest.mark.slow
def test_a_failing_cell_is_recorded_and_the_others_complete(tmp_path):
    """Two cells point at an empty CamVid folder. The matrix accepts them (the folder
    exists; its content is the dataset's to check); they fail at run time."""
    missing = tmp_path / "empty-camvid"
    missing.mkdir()
    path = write_experiment(tmp_path, "fails", matrix_axes={"model.head": ["parametric"]},
                            include=[{"data.dataset": "camvid", "data.root": str(missing), "train.seed": s}
                                     for s in (0, 1)])
    results = tmp_path / "results"
    store = Store(results, "fails")
    proc = harness("run", path, results=results)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # some cells failed
    assert "2 of 3 selected cell(s) failed or crashed" in proc.stderr
    states = {rid: store.state(rid) for rid in store.run_ids()}
    assert sorted(states.values()) == ["done", "failed", "failed"]
    for rid in (r for r, s in states.items() if s == "failed"):
        trace = (store.run_dir(rid) / "error.txt").read_text()
        assert trace.startswith("Traceback (most recent call last)")
        assert "FileNotFoundError" in trace and str(missing) in trace
        assert store.status(rid)["error"].startswith("FileNotFoundError")
        assert f"failed {rid}" in proc.stderr
        assert not (store.run_dir(rid) / "claim").exists()
    assert "parametric" in proc.stdout  # the finished cell is reported

    again = harness("run", path, results=results)
    assert again.returncode == 1  # the failed cells are still failed
    assert sorted(plan(again.stdout).values()) == ["skip (done)", "skip (failed; --retry-failed)",
                                                   "skip (failed; --retry-failed)"]

    retry = harness("run", path, "--retry-failed", results=results)
    assert retry.returncode == 1
    assert sorted(plan(retry.stdout).values()) == ["run", "run", "skip (done)"]
    assert sorted(attempts(store).values()) == [1, 2, 2]


@pytest.mark.slow
def test_local_backend_reports_a_run_started_elsewhere(tmp_path):
    """A run whose claim is held by a live process is not started."""
    from harness.backends import local
    from harness.store import owner, process_start

    sweep = matrix.expand_doc({"sweep": "held", "base": tiny_spec()}, "held.yaml")
    store = Store(tmp_path, "held")
    spec = sweep.runs[0]
    store.prepare(spec.run_id, spec.spec, spec.settings)
    other = {**owner(), "pid": os.getppid(), "started": process_start(os.getppid())}
    assert store.claim(spec.run_id, other)
    final = local.run(store, [spec], {"jobs": 1, "stale_after": 120}, progress=False)
    assert final == {spec.run_id: "running elsewhere"}
    assert not (store.run_dir(spec.run_id) / "worker.log").exists()


@pytest.mark.slow
def test_local_backend_does_not_rerun_a_run_that_became_done(tmp_path):
    from harness.backends import local

    # a spec that fails fast if it is (wrongly) executed: the test stays short either way
    sweep = matrix.expand_doc({"sweep": "race", "base": {**tiny_spec(), "data": {
        "dataset": "camvid", "root": str(tmp_path / "none")}}}, "race.yaml")
    store = Store(tmp_path, "race")
    spec = sweep.runs[0]
    store.prepare(spec.run_id, spec.spec, spec.settings)
    # the plan said "run"; meanwhile another harness finished it and released its claim
    (store.run_dir(spec.run_id) / "metrics.json").write_text('{"mIoU": 50.0}')
    local.run(store, [spec], {"jobs": 1, "stale_after": 120}, progress=False)
    assert store.status(spec.run_id).get("attempts", 0) == 0, "the finished run was executed again"
    assert not (store.run_dir(spec.run_id) / "worker.log").exists()


# ---- crash and resume ----------------------------------------------------------------------

@pytest.mark.slow
def test_kill_minus_9_then_the_same_command_resumes(tmp_path):
    """SIGKILL the harness mid-sweep: its workers and their forkserver die with it;
    the same command then resumes the interrupted run from its checkpoint and
    leaves the finished one alone."""
    path = write_experiment(tmp_path, "killed", matrix_axes={"train.iterations": [3, 40]}, jobs=2,
                            checkpoint_interval=5)
    results = tmp_path / "results"
    store = Store(results, "killed")
    short, long_ = (r.run_id for r in matrix.load(path).runs)
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(harness_command("run", path, results=results), cwd=ROOT, stdout=log,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: store.is_done(short) and store.has_checkpoint(long_), 180,
                 "the short run to finish and the long one to checkpoint", first)
        assert not store.is_done(long_), "the long run finished before the kill: make it longer"
        workers = [store.status(long_)["pid"], *children(first.pid)]  # the run's worker, the forkserver
        assert all(Path(f"/proc/{pid}").exists() for pid in workers), "no worker process is running"
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        log.close()
    # die and be reaped (a zombie's pid still answers kill(pid, 0), so it would look alive)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 15, "the workers to be reaped")
    assert store.state(long_) == "crashed"
    done_mtime = (store.run_dir(short) / "metrics.json").stat().st_mtime_ns

    second = harness("run", path, results=results)
    assert second.returncode == 0, second.stdout + second.stderr
    assert plan(second.stdout) == {short: "skip (done)", long_: "resume"}
    assert (store.run_dir(short) / "metrics.json").stat().st_mtime_ns == done_mtime
    assert store.is_done(long_)
    train_log = (store.run_dir(long_) / "train.log").read_text()
    assert "resumed from iteration" in train_log
    resumed_at = int(train_log.split("resumed from iteration")[1].split()[0])
    assert 5 <= resumed_at < 40 and resumed_at % 5 == 0
    assert store.status(long_)["attempts"] == 2 and store.status(long_)["resumed"] is True
    assert store.status(short)["attempts"] == 1
    history = json.loads((store.run_dir(long_) / "metrics.json").read_text())["history"]
    assert [h["iteration"] for h in history] == list(range(1, 41))  # each iteration logged once


# ---- two harnesses on one sweep ---------------------------------------------------------------

def run_two_harnesses(tmp_path, path, results) -> tuple[list[int], list[str]]:
    """Start two `harness run` of the same file at the same moment; their exit codes and outputs."""
    logs = [open(tmp_path / f"h{i}.log", "w+") for i in range(2)]
    procs = [subprocess.Popen(harness_command("run", path, results=results), cwd=ROOT, stdout=log,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True) for log in logs]
    try:
        codes = [proc.wait(TIMEOUT) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    return codes, outputs


@pytest.mark.slow
def test_two_harnesses_at_once_never_run_a_cell_twice(tmp_path):
    path = write_experiment(tmp_path, "twice")
    results = tmp_path / "results"
    store = Store(results, "twice")
    ids = [r.run_id for r in matrix.load(path).runs]
    codes, outputs = run_two_harnesses(tmp_path, path, results)
    assert codes == [0, 0], outputs
    assert attempts(store) == {rid: 1 for rid in ids}, outputs
    assert all(store.is_done(rid) for rid in ids)
    ran = [rid for out in outputs for state, rid in finished(out) if state == "done"]
    assert sorted(ran) == sorted(ids), f"each cell is run by exactly one harness: {outputs}"
    # whatever one harness ran, the other skipped or found running elsewhere
    for mine, theirs in (outputs, outputs[::-1]):
        for state, rid in finished(mine):
            if state == "done":
                skipped = plan(theirs).get(rid, "").startswith("skip")
                elsewhere = any(r == rid and "elsewhere" in state for state, r in finished(theirs))
                assert skipped or elsewhere, (rid, outputs)


# ---- a bad experiment file ----------------------------------------------------------------

def test_unknown_key_exits_2_and_creates_nothing(tmp_path):
    path = write_experiment(tmp_path, "typo")
    doc = yaml.safe_load(path.read_text())
    doc["base"]["train"]["iteratons"] = 5
    path.write_text(yaml.safe_dump(doc))
    results = tmp_path / "results"
    proc = harness("run", path, results=results)
    assert proc.returncode == 2
    assert str(path) in proc.stderr and "train.iteratons" in proc.stderr
    assert "did you mean 'iterations'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (results / "typo").exists()


def test_bad_set_override_exits_2(tmp_path):
    path = write_experiment(tmp_path, "badset")
    proc = harness("run", path, "--set", "base.train.iteratons=3", "--dry-run", results=tmp_path / "r")
    assert proc.returncode == 2 and "did you mean 'iterations'" in proc.stderr
    proc = harness("run", path, "--set", "jobs", "--dry-run", results=tmp_path / "r")
    assert proc.returncode == 2 and "key.path=value" in proc.stderr


@pytest.mark.slow
def test_a_harness_does_not_rerun_the_cell_the_other_one_finished(tmp_path):
    """Deterministic form of the race: jobs 1 each, a long cell then a short one.
    One harness takes the long cell, the other the short one, which ends first;
    when the long one ends, its harness must not take the (finished) short cell."""
    path = write_experiment(tmp_path, "longshort", matrix_axes={"train.iterations": [24, 3]}, jobs=1,
                            checkpoint_interval=8)
    results = tmp_path / "results"
    store = Store(results, "longshort")
    long_, short = (r.run_id for r in matrix.load(path).runs)
    codes, outputs = run_two_harnesses(tmp_path, path, results)
    assert codes == [0, 0], outputs
    assert store.is_done(long_) and store.is_done(short)
    assert attempts(store) == {long_: 1, short: 1}, outputs
    assert "resumed from iteration" not in (store.run_dir(short) / "train.log").read_text()
