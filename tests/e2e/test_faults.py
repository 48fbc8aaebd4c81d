"""The faults a hostile but fair user finds (issue 17), each against the real CLI where a user meets it:
two trainers in one run folder, writes through planted links, files of the wrong type, a dead
forkserver, input that is not an experiment file, matrices too big to plan, values that cannot run."""
from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_harness, start_harness, tiny_experiment, tiny_spec, wait_for
from harness import cli, matrix
from harness.store import Store
from protoseg import config, engine
from protoseg.io import LinkRefused, open_append

TIMEOUT = 240


def experiment(folder: Path, axes=None, iterations: int = 2, executor=None, **train) -> Path:
    axes = axes if axes is not None else {"model.head": ["parametric"]}
    return tiny_experiment(folder, "faults", axes, None, iterations, executor or {"backend": "local", "jobs": 1},
                           **train)


def iteration(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "progress.json").read_text())["iteration"]
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def only_run(path: Path) -> str:
    (run,) = matrix.load(path).runs
    return run.run_id


def final_weights(run_dir: Path) -> dict:
    (last,) = sorted((run_dir / "checkpoints").glob("iter_*.pt"))[-1:]
    return torch.load(last, weights_only=True)["model"]


# ---- 1. fencing: one trainer per run folder ------------------------------------------------

@pytest.mark.slow
def test_a_stopped_harness_keeps_its_run_and_a_second_harness_leaves_it(tmp_path):
    """Ctrl-Z / SIGSTOP of a whole `harness run` past stale_after, a second `harness run` of the same
    sweep, then SIGCONT: one trainer, one attempt, no failure, and the weights of an uninterrupted run."""
    path = experiment(tmp_path, iterations=40, checkpoint_interval=10, keep_checkpoints=1)
    doc = yaml.safe_load(path.read_text())
    doc["executor"]["stale_after"] = 1  # seconds: the stop below is far longer
    path.write_text(yaml.safe_dump(doc))
    rid, results = only_run(path), tmp_path / "results"
    run_dir = results / "faults" / rid

    first = start_harness(path, results)
    wait_for(lambda: iteration(run_dir) >= 3, 120, "the first iterations")
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        time.sleep(3)
        second = run_harness("run", path, results=results, timeout=TIMEOUT)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert second.returncode == 0, second.stderr
    assert "running elsewhere" in second.stderr + second.stdout
    out, err = first.communicate(timeout=TIMEOUT)
    assert first.returncode == 0, out + err

    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"] == 1 and not status.get("error")
    assert not (run_dir / "error.txt").exists()

    alone = tmp_path / "alone"
    assert run_harness("run", path, results=alone, timeout=TIMEOUT).returncode == 0
    theirs, ours = final_weights(alone / "faults" / rid), final_weights(run_dir)
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)


@pytest.mark.slow
def test_a_worker_whose_run_was_taken_over_stops_and_writes_nothing(tmp_path):
    """A harness on another host takes the run over (this one's heartbeat looked stale there): the
    claim gets a new token; this worker's next write finds it and the worker stops, writing nothing."""
    path = experiment(tmp_path, iterations=5000, checkpoint_interval=2, log_interval=1)
    rid, results = only_run(path), tmp_path / "results"
    store = Store(results, "faults")
    run_dir = store.run_dir(rid)
    first = start_harness(path, results)
    wait_for(lambda: iteration(run_dir) >= 3, 120, "the first iterations")

    remote = {"host": "another-node", "pid": 4242, "backend": "local", "token": "the-new-owner's"}
    with store.fence(rid, None):  # under the run's lock, as a real takeover is
        (run_dir / "claim").write_text(json.dumps(remote))
        store._merge_status(rid, {"state": "running", "host": "another-node", "attempts": 2})
    watched = ("status.json", "claim", "progress.json", "train.log", "checkpoints")
    before = {name: _snapshot(run_dir / name) for name in watched}

    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, out + err  # nothing failed: the run goes on elsewhere
    assert f"taken over {rid}" in out
    assert {name: _snapshot(run_dir / name) for name in watched} == before
    assert json.loads((run_dir / "claim").read_text()) == remote
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "error.txt").exists()


def _snapshot(path: Path):
    if path.is_dir():
        return sorted((p.name, p.stat().st_mtime_ns) for p in path.iterdir())
    return path.read_bytes() if path.exists() else None


# ---- 2, 3. no link is followed in a results folder -----------------------------------------

RUN_LINKS = ["", "checkpoints", "train.log", "worker.log", ".lock"]
SWEEP_LINKS = ["sweep", ".lock", ".tensorboard"]


@pytest.mark.parametrize("where", [f"run/{name}" for name in RUN_LINKS] + [f"sweep/{n}" for n in SWEEP_LINKS])
def test_a_planted_link_is_refused_with_one_line_and_its_target_is_untouched(tmp_path, where):
    path = experiment(tmp_path)
    rid, results = only_run(path), tmp_path / "results"
    level, _, name = where.partition("/")
    sweep_dir = results / "faults"
    outside = tmp_path / "outside"
    if level == "sweep" and name == "sweep":
        results.mkdir()
        link, target = sweep_dir, outside
    else:
        folder = sweep_dir / rid if level == "run" else sweep_dir
        folder.parent.mkdir(parents=True, exist_ok=True)
        if name:
            folder.mkdir(parents=True, exist_ok=True)
        link = folder / name if name else folder
        target = outside if name in ("", "checkpoints", ".tensorboard") else outside / "victim.txt"
    outside.mkdir()
    if target.suffix:
        target.write_text("precious\n")
    link.symlink_to(target)

    proc = run_harness("run", path, results=results)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(link) in lines[0] and "symbolic link" in lines[0], proc.stderr
    assert sorted(p.name for p in outside.iterdir()) == (["victim.txt"] if target.suffix else [])
    if target.suffix:
        assert target.read_text() == "precious\n"


def test_a_linked_results_root_is_used_only_when_the_user_says_so(tmp_path):
    path = experiment(tmp_path)
    scratch, results = tmp_path / "scratch", tmp_path / "results"
    scratch.mkdir()
    results.symlink_to(scratch, target_is_directory=True)
    refused = run_harness("run", path, results=results)
    assert refused.returncode == 2 and "--linked-results" in refused.stderr, refused.stderr
    assert str(results) in refused.stderr and list(scratch.iterdir()) == []
    allowed = run_harness("run", path, "--linked-results", results=results)
    assert allowed.returncode == 0, allowed.stderr
    assert (scratch / "faults" / only_run(path) / "metrics.json").is_file()


def test_a_link_planted_while_the_run_trains_is_not_followed(tmp_path):
    """The plan checked the folder; a link planted after it is refused where the file is opened."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "train.log").symlink_to(victim)
    with pytest.raises(LinkRefused, match="train.log"):
        engine.run(tiny_spec(train={"iterations": 1}), run_dir)
    (run_dir / "train.log").unlink()
    (run_dir / "checkpoints").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(LinkRefused, match="checkpoints"):
        engine.run(tiny_spec(train={"iterations": 2}), run_dir)
    assert victim.read_text() == "precious\n" and not list(tmp_path.glob("iter_*"))
    (run_dir / "worker.log").symlink_to(victim)
    with pytest.raises(LinkRefused, match="worker.log"):
        open_append(run_dir / "worker.log")  # the local backend's worker output


# ---- 4. files that parse but are wrong ----------------------------------------------------

CORRUPT = {
    "metrics text mIoU": ("metrics.json", '{"mIoU": "abc"}', "'mIoU' is 'abc'"),
    "metrics null mIoU": ("metrics.json", '{"mIoU": null}', "'mIoU' is None"),
    "metrics NaN mIoU": ("metrics.json", '{"mIoU": NaN}', "'mIoU' is nan"),
    "metrics folder": ("metrics.json", None, "a folder"),
    "status folder": ("status.json", None, "a folder"),
    "status settings": ("status.json", '{"state": "done", "settings": "abc"}', "'settings' is 'abc'"),
}


@pytest.mark.slow
def test_files_of_the_wrong_type_are_corrupt_with_the_reason_and_never_exit_4(tmp_path):
    path = experiment(tmp_path, axes={"train.seed": list(range(len(CORRUPT)))})
    results = tmp_path / "results"
    assert run_harness("run", path, results=results).returncode == 0
    store = Store(results, "faults")
    by_seed = {store.status(rid)["settings"]["train.seed"]: rid for rid in store.run_ids()}
    cases = {by_seed[i]: case for i, case in enumerate(CORRUPT.values())}
    for rid, (name, content, _) in cases.items():
        target = store.run_dir(rid) / name
        target.unlink()
        target.mkdir() if content is None else target.write_text(content)

    status = run_harness("status", "faults", results=results)
    assert status.returncode == 0, status.stderr
    for rid, (name, _, why) in cases.items():
        line = next(line for line in status.stdout.splitlines() if rid in line)
        if name == "metrics.json":
            assert "corrupt" in line and name in line and why in line, line
        else:  # metrics.json is the truth of a done run; its status.json only describes it
            assert "done" in line.split(), line
    for fmt in ("md", "latex", "csv"):
        report = run_harness("report", "faults", "--format", fmt, results=results)
        assert report.returncode == 0, report.stderr
        assert report.stderr.count("is corrupt") == 4, report.stderr
    again = run_harness("run", path, results=results)
    assert again.returncode == 0, again.stderr
    assert all(store.state(rid) == "done" for rid in cases)
    redone = [rid for rid, (name, _, _) in cases.items() if name == "metrics.json"]
    assert all(list(store.run_dir(rid).glob("metrics.json.corrupt-*")) for rid in redone)


# ---- 5. a stop checkpoint after the forkserver died -----------------------------------------

@pytest.mark.slow
def test_sigterm_after_the_forkserver_died_still_checkpoints_the_running_run(tmp_path):
    path = experiment(tmp_path, iterations=5000, checkpoint_interval=1000)
    rid, results = only_run(path), tmp_path / "results"
    store = Store(results, "faults")
    proc = start_harness(path, results)
    wait_for(lambda: iteration(store.run_dir(rid)) >= 3, 120, "the first iterations")
    worker = store.status(rid)["pid"]
    forkserver = int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(forkserver, signal.SIGKILL)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 143, out + err
    status = store.status(rid)
    assert status["state"] == "cancelled" and "checkpoint saved" in status["error"], status
    saved = sorted((store.run_dir(rid) / "checkpoints").glob("iter_*.pt"))
    assert saved and int(saved[-1].stem.split("_")[1]) >= 3


# ---- 6. input and filesystem conditions: exit 2, one line ----------------------------------

@pytest.mark.parametrize("content,said", [
    (b"sweep: x\nbase: {}\n\xff\xfe\n", "not UTF-8 text"),
    (b"[" * 5000 + b"]" * 5000, "nest too deeply"),
    (b"base: " + b"[" * 40 + b"]" * 40, "more than 32 levels deep"),
    (b"a: &a [1, *a]\n", "hold itself"),
])
def test_a_file_that_is_no_experiment_exits_2_with_one_line(tmp_path, content, said):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    proc = run_harness("run", path, "--dry-run", results=tmp_path / "results")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and str(path) in lines[0] and said in lines[0], proc.stderr


def test_a_huge_experiment_file_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.write(b"sweep: huge\n# " + b"x" * (11 * 2**20) + b"\n")
    started = time.perf_counter()
    proc = run_harness("run", path, "--dry-run", results=tmp_path / "results")
    assert proc.returncode == 2 and "11 MB" in proc.stderr and "limit is 10 MB" in proc.stderr, proc.stderr
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize("existing", [False, True])
def test_a_read_only_results_folder_exits_2_naming_the_folder(tmp_path, monkeypatch, capsys, existing):
    """EROFS (a read-only mount) for a new sweep and for one that exists: one line, not a traceback
    and not the flock message."""
    path, results = experiment(tmp_path), tmp_path / "results"
    if existing:
        (results / "faults").mkdir(parents=True)
    real_open = os.open

    def read_only(file, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, flags, *args, **kwargs)

    def no_mkdir(self, *args, **kwargs):
        if not self.exists():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(Path, "mkdir", no_mkdir)
    code = cli.main(["run", str(path), "--results", str(results)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Read-only file system" in err[0] and "faults" in err[0], err
    assert "flock" not in err[0]


def test_a_disk_that_fills_during_a_write_exits_2(tmp_path, monkeypatch, capsys):
    """ENOSPC from write/fsync names no file: still one line naming the results folder, not exit 4."""
    path, results = experiment(tmp_path), tmp_path / "results"

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code = cli.main(["run", str(path), "--results", str(results)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "No space left" in err[0] and str(results) in err[0], err


def test_a_validation_split_without_a_labelled_pixel_fails_the_run_not_loops(tmp_path, monkeypatch):
    """mIoU undefined (every val pixel ignored): the run fails saying so; it is not written as done,
    which would make it corrupt and redone forever."""
    real = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda *a, **k: {**real(*a, **k), "mIoU": None})
    with pytest.raises(ValueError, match="has a class label"):
        engine.run(tiny_spec(train={"iterations": 1}), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()


# ---- 7. planning limits ---------------------------------------------------------------------

def test_a_matrix_too_big_is_refused_from_its_axes_before_expansion(tmp_path):
    axes = {"train.seed": list(range(100)), "train.lr": [0.01 * (i + 1) for i in range(100)],
            "model.prototype.gamma": [0.9 + 0.0001 * i for i in range(100)], "data.batch_size": list(range(1, 11))}
    path = experiment(tmp_path, axes=axes)
    started = time.perf_counter()
    proc = run_harness("run", path, "--dry-run", results=tmp_path / "results")
    assert time.perf_counter() - started < 60  # counted, not expanded: 10^7 cells would take minutes
    assert proc.returncode == 2 and "10,000,000 cells" in proc.stderr and "--max-cells" in proc.stderr, proc.stderr
    small = experiment(tmp_path, axes={"train.seed": [0, 1, 2], "model.head": ["parametric", "nonparametric"]})
    proc = run_harness("run", small, "--dry-run", "--max-cells", "5", results=tmp_path / "results")
    assert proc.returncode == 2 and "6 cells (3 seed x 2 head)" in proc.stderr, proc.stderr
    proc = run_harness("run", small, "--dry-run", "--max-cells", "6", results=tmp_path / "results")
    assert proc.returncode == 0 and "6 = 3 seed x 2 head" in proc.stdout, proc.stdout + proc.stderr


# ---- 8. values that cannot run --------------------------------------------------------------

@pytest.mark.parametrize("section,key,value,said", [
    ("train", "seed", -1, "numpy's seed range"),
    ("model.prototype", "num_prototypes", 10**9, "an integer in [1, 1,000]"),
])
def test_values_that_cannot_run_are_refused_at_plan_time(tmp_path, section, key, value, said):
    path = experiment(tmp_path)
    doc = yaml.safe_load(path.read_text())
    config.set_path(doc["base"], f"{section}.{key}", value)
    path.write_text(yaml.safe_dump(doc))
    proc = run_harness("run", path, "--dry-run", results=tmp_path / "results")
    assert proc.returncode == 2 and f"'{section}.{key}'" in proc.stderr and said in proc.stderr, proc.stderr
    assert not (tmp_path / "results").exists()

