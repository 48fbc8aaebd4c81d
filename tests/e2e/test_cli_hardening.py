"""What the harness does with bad input, broken files, signals and shared folders:
the real CLI in subprocesses. Exit codes: 0 done, 1 cells failed or crashed,
2 invalid input, 3 backend unreachable, 4 internal error, 128+N a signal."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import run_harness, start_harness, tiny_experiment, wait_for
from harness import cli
from harness.store import Store

TIMEOUT = 240


def experiment(folder: Path, name: str = "hard", axes=None, iterations: int = 2, **train) -> Path:
    axes = axes if axes is not None else {"model.head": ["parametric", "nonparametric"]}
    return tiny_experiment(folder, name, axes, None, iterations, {"backend": "local", "jobs": 1}, **train)


def progress(store: Store) -> int:
    for rid in store.run_ids():
        try:
            return json.loads((store.run_dir(rid) / "progress.json").read_text())["iteration"]
        except (FileNotFoundError, ValueError):
            pass
    return 0


# ---- input errors: exit 2, nothing created ------------------------------------------------

@pytest.mark.parametrize("key,value,named", [("iterations", -5, "train.iterations"), ("lr", "fast", "train.lr")])
def test_an_invalid_value_exits_2_at_plan_time_naming_the_key(tmp_path, key, value, named):
    path = experiment(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["base"]["train"][key] = value
    path.write_text(yaml.safe_dump(doc))
    proc = run_harness("run", path, "--dry-run", results=tmp_path / "results")
    assert proc.returncode == 2 and named in proc.stderr and "valid" in proc.stderr, proc.stderr
    assert not (tmp_path / "results").exists()


def test_dry_run_checks_that_dataset_roots_exist(tmp_path):
    path = experiment(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["base"]["data"].update(dataset="camvid", root=str(tmp_path / "no-such-camvid"))
    doc["base"]["data"].pop("synthetic")
    path.write_text(yaml.safe_dump(doc))
    proc = run_harness("run", path, "--dry-run", results=tmp_path / "results")
    assert proc.returncode == 2 and "data.root" in proc.stderr and "no-such-camvid" in proc.stderr, proc.stderr


def test_a_data_root_from_the_environment_is_checked_expanded_and_hashed_as_written(tmp_path):
    path = experiment(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["base"]["data"].update(dataset="camvid", root="${PROTOSEG_DATA:-/no/such/camvid}")
    doc["base"]["data"].pop("synthetic")
    path.write_text(yaml.safe_dump(doc))
    missing = run_harness("run", path, "--dry-run", results=tmp_path / "results", env={"PROTOSEG_DATA": ""})
    assert missing.returncode == 2 and "'/no/such/camvid' is not a folder" in missing.stderr, missing.stderr
    plans = []
    for folder in (tmp_path / "a", tmp_path / "b"):
        folder.mkdir()
        plans.append(run_harness("run", path, "--dry-run", results=tmp_path / "results",
                                 env={"PROTOSEG_DATA": str(folder)}))
        assert plans[-1].returncode == 0, plans[-1].stderr
    assert plans[0].stdout == plans[1].stdout  # the run ids hash '${PROTOSEG_DATA:-...}', not the folder


def test_an_only_that_matches_nothing_exits_2_and_creates_nothing(tmp_path):
    proc = run_harness("run", experiment(tmp_path), "--only", "train.seed=7", results=tmp_path / "results")
    assert proc.returncode == 2 and "matches none of its 2 cells" in proc.stderr, proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_cells_that_are_not_selected_get_no_folder(tmp_path):
    path = experiment(tmp_path, axes={"train.seed": list(range(10))}, iterations=1)
    proc = run_harness("run", path, "--only", "train.seed=3", results=tmp_path / "results")
    assert proc.returncode == 0, proc.stderr
    assert "10 cells, 1 selected" in proc.stdout
    assert len(Store(tmp_path / "results", "hard").run_ids()) == 1


@pytest.mark.parametrize("command", [["status", "../.."], ["report", "../../etc"], ["cancel", "../x"],
                                     ["status", "a/b"]])
def test_sweep_names_that_leave_the_results_folder_are_refused(tmp_path, command):
    results = tmp_path / "deep" / "results"
    results.mkdir(parents=True)
    proc = run_harness(*command, results=results)
    assert proc.returncode == 2 and "letters, digits" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "results"]  # nothing written anywhere


def test_a_results_folder_without_flock_is_refused_at_start(tmp_path, monkeypatch, capsys):
    import fcntl

    def no_flock(*args):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    code = cli.main(["run", str(experiment(tmp_path)), "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and "flock" in err and "--results" in err, err
    assert not any((tmp_path / "results" / "hard").glob("*/status.json"))


def test_a_results_folder_whose_flock_stays_in_one_mount_is_refused_unless_trusted(tmp_path, monkeypatch, capsys):
    from harness import backends, launch, mounts

    info = tmp_path / "mountinfo"
    info.write_text(f"27 1 254:0 / / rw - ext4 /dev/vda rw\n"
                    f"70 27 0:70 / {os.path.realpath(tmp_path)} rw - nfs4 server:/home rw,local_lock=flock\n")
    monkeypatch.setattr(mounts, "MOUNTINFO", info)
    path, results = experiment(tmp_path), tmp_path / "results"
    code = cli.main(["run", str(path), "--results", str(results)])
    err = capsys.readouterr().err
    assert code == 2 and "nfs4" in err and "local_lock=flock" in err and "--trust-flock" in err, err
    assert not any((results / "hard").glob("*/status.json"))

    def unreachable(*args):
        raise backends.BackendUnavailable("stopped here: the runs were prepared")

    monkeypatch.setattr(launch, "execute", unreachable)
    code = cli.main(["run", str(path), "--results", str(results), "--trust-flock"])
    assert code == 3 and "stopped here" in capsys.readouterr().err
    assert len(list((results / "hard").glob("*/status.json"))) == 2  # prepared: the check let it through


def test_an_internal_error_exits_4_with_its_traceback(tmp_path, monkeypatch, capsys):
    (tmp_path / "results" / "x").mkdir(parents=True)
    (tmp_path / "results" / "x" / "sweep.json").write_text("{}")

    def broken(self, stale_after=120):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Store, "rows", broken)
    code = cli.main(["status", "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 4 and "internal error" in err and "RuntimeError: a bug" in err


@pytest.mark.slow
def test_a_permission_error_is_one_line_naming_the_file(tmp_path):
    results = tmp_path / "results"
    path = experiment(tmp_path, axes={"model.head": ["parametric"]}, iterations=1)
    assert run_harness("run", path, results=results).returncode == 0
    sweep_dir = results / "hard"
    if subprocess.run(["chattr", "+i", str(sweep_dir)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i (an immutable folder: EPERM even for root) is not available here")
    try:
        proc = run_harness("run", path, "--force", results=results)
    finally:
        subprocess.run(["chattr", "-i", str(sweep_dir)], check=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: permission denied: ") and str(sweep_dir) in lines[0]


# ---- broken run files: shown, never fatal, redone -----------------------------------------

@pytest.mark.slow
def test_corrupt_metrics_and_status_files_are_shown_and_the_run_is_evaluated_again(tmp_path):
    results = tmp_path / "results"
    path = experiment(tmp_path)
    assert run_harness("run", path, results=results).returncode == 0
    store = Store(results, "hard")
    truncated, garbled = sorted(store.run_ids())
    miou = json.loads((store.run_dir(truncated) / "metrics.json").read_text())["mIoU"]
    metrics = store.run_dir(truncated) / "metrics.json"
    metrics.write_bytes(metrics.read_bytes()[:40])
    (store.run_dir(garbled) / "status.json").write_bytes(b"\xff\xfe\x00garbage")

    status = run_harness("status", "hard", results=results)
    assert status.returncode == 0, status.stderr
    line = next(line for line in status.stdout.splitlines() if truncated in line)
    assert "corrupt" in line and "metrics.json" in line
    assert "done" in next(line for line in status.stdout.splitlines() if garbled in line)

    table = run_harness("report", "hard", results=results)
    assert table.returncode == 0 and str(metrics) in table.stderr and "corrupt" in table.stderr

    again = run_harness("run", path, results=results)
    assert again.returncode == 0, again.stderr
    assert "resume (corrupt metrics.json (not whole JSON" in again.stdout, again.stdout
    assert json.loads(metrics.read_text())["mIoU"] == miou  # evaluated again from the final checkpoint
    assert list(store.run_dir(truncated).glob("metrics.json.corrupt-*"))  # kept for a look
    assert store.state(garbled) == "done"


# ---- exit codes and signals ---------------------------------------------------------------

@pytest.mark.slow
def test_a_killed_worker_is_crashed_and_the_harness_exits_1(tmp_path):
    results = tmp_path / "results"
    proc = start_harness(experiment(tmp_path, axes={"model.head": ["parametric"]}, iterations=2000,
                            checkpoint_interval=1000), results)
    store = Store(results, "hard")
    wait_for(lambda: progress(store) >= 1, 120, "the first iterations")
    (rid,) = store.run_ids()
    os.kill(store.status(rid)["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 1, out + err
    assert "1 of 1 selected cell(s) failed or crashed" in err and f"crashed {rid}" in err


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_checkpoint_the_running_runs(tmp_path, sig):
    results = tmp_path / "results"
    path = experiment(tmp_path, axes={"model.head": ["parametric"]}, iterations=2000, checkpoint_interval=1000)
    proc = start_harness(path, results)
    store = Store(results, "hard")
    wait_for(lambda: progress(store) >= 3, 120, "the first iterations")
    if sig == signal.SIGHUP:
        os.killpg(proc.pid, sig)  # a dropped ssh session: the whole foreground group
    else:
        proc.send_signal(sig)  # `timeout`, a batch system: the harness alone
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + sig, out + err
    (rid,) = store.run_ids()
    saved = sorted((store.run_dir(rid) / "checkpoints").glob("iter_*.pt"))
    assert saved and int(saved[-1].stem.split("_")[1]) >= 3  # a checkpoint of where it stopped, not of iteration 1000
    assert store.state(rid) not in ("running", "crashed")


@pytest.mark.slow
def test_resource_fields_come_from_the_current_command_at_each_attempt(tmp_path):
    results = tmp_path / "results"
    path = experiment(tmp_path, axes={"model.head": ["parametric"]}, iterations=1)
    first = run_harness("run", path, "--set", "base.train.device=cuda", results=results)
    assert first.returncode == 1 and "failed" in first.stderr, first.stdout + first.stderr
    retry = run_harness("run", path, "--retry-failed", "--set", "base.train.device=cpu", results=results)
    assert retry.returncode == 0, retry.stderr
    (rid,) = Store(results, "hard").run_ids()
    assert rid in first.stdout and rid in retry.stdout  # the same run, now on the CPU
    assert json.loads((results / "hard" / rid / "metrics.json").read_text())["device"] == "cpu"
