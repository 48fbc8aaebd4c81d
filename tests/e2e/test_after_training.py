"""What follows a run's last iteration (evaluation, MAC counting, FPS timing, predictions), and the
threads of a cell rerun alone. What a user relies on:
- progress.json and train.log name the phase the run is in after training;
- MACs are counted once per architecture and size for a whole results folder, in a cache that is
  written atomically and never read or written through a symbolic link;
- the FPS timing of a short run takes a fraction of its training time, not eval.fps_max_s;
- a stop (Ctrl-C, SIGTERM, SIGHUP, `harness cancel`) during any of these phases stops the run as a
  stop during training does: cancelled, resumable without training again, no process left behind;
- a cell rerun alone gets the torch threads the sweep gave it (cores / executor.jobs)."""
from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_harness, start_harness, tiny_experiment, tiny_spec, wait_for
from harness import matrix
from harness.backends import local
from harness.store import Store
from protoseg import complexity, config, engine, phases, speed
from protoseg.io import LinkRefused
from protoseg.models import build_model

TIMEOUT = 300
AFTER = ("evaluating", "counting MACs", "timing FPS", "saving predictions")


def phase_of(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "progress.json").read_text()).get("phase")
    except (OSError, ValueError):
        return None


def training_lines(run_dir: Path) -> list[str]:
    return re.findall(r"INFO iter \d+/\d+ loss", (run_dir / "train.log").read_text())


# ---- the phases after training, in process ---------------------------------------------------

@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    """A run in each of two sweeps of one results folder (as harness lays them out, with the folder's count
    cache, as the worker gives it), the FPS timing
    asked for far more images than a short run should spend time on: (results folder, the phases
    progress.json showed each time a run asked `stop`, the metrics of each)."""
    results = tmp_path_factory.mktemp("after") / "results"
    spec = tiny_spec(train={"iterations": 4}, eval={"fps_images": 10**6, "fps_warmup": 1, "fps_max_s": 60.0})
    seen, metrics = {}, {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(phases, "STOP_POLL_S", 0.0)  # ask at every chance: each phase is seen
        for sweep in ("first", "second"):
            (results / sweep).mkdir(parents=True)
            run_dir = results / sweep / "run"
            seen[sweep] = []

            def stop(run_dir=run_dir, shown=seen[sweep]) -> bool:
                phase = phase_of(run_dir)
                if not shown or shown[-1] != phase:
                    shown.append(phase)
                return False

            metrics[sweep] = engine.run(spec, run_dir, stop=stop, complexity_cache=results / ".complexity")
    return results, seen, metrics


@pytest.mark.slow
def test_progress_and_train_log_name_each_phase_after_training(two_sweeps):
    results, seen, _ = two_sweeps
    assert seen["first"][-4:] == list(AFTER), seen["first"]
    assert phase_of(results / "first" / "run") == "saving predictions"
    progress = json.loads((results / "first" / "run" / "progress.json").read_text())
    assert progress["iteration"] == progress["iterations"] == 4 and isinstance(progress["loss"], float)
    log = (results / "first" / "run" / "train.log").read_text()
    starts = [log.index(f"INFO {phase} ") for phase in AFTER]  # one line as each phase starts, in order
    assert starts == sorted(starts) and log.index("INFO iter 4/4") < starts[0]


@pytest.mark.slow
def test_macs_are_counted_once_per_architecture_for_the_results_folder(two_sweeps):
    results, seen, metrics = two_sweeps
    cache = results / ".complexity"
    assert len(list(cache.glob("*.json"))) == 1, list(results.rglob("*complexity*"))
    assert "counting MACs" not in seen["second"], seen["second"]  # the other sweep's run found the count
    assert "MACs and FLOPs at 64x64: from" in (results / "second" / "run" / "train.log").read_text()
    assert metrics["second"]["macs"] == metrics["first"]["macs"] > 0
    assert not list(results.glob("*/.complexity")), "a cache per sweep"


@pytest.mark.slow
def test_fps_timing_of_a_short_run_takes_a_fraction_of_its_training_not_fps_max_s(two_sweeps):
    _, _, metrics = two_sweeps
    first = metrics["first"]
    timed = first["inference_fps_images"] / first["inference_fps"]  # seconds, of 10**6 images asked for
    assert timed < 60.0 / 2, timed  # eval.fps_max_s is 60
    assert timed <= speed.fps_budget(60.0, first["train_time_s"]) + 1.0, timed  # one image past it at most
    assert first["after_training_s"]["timing FPS"] < 60.0 / 2


def test_fps_budget_is_a_tenth_of_training_at_least_a_few_seconds_at_most_fps_max_s():
    assert speed.fps_budget(60.0, 4.0) == speed.FPS_MIN_S == 5.0
    assert speed.fps_budget(60.0, 300.0) == pytest.approx(30.0)
    assert speed.fps_budget(60.0, 36000.0) == 60.0
    assert speed.fps_budget(2.0, 1.0) == 2.0  # never more than eval.fps_max_s


def test_distinct_architectures_classes_and_sizes_never_share_a_cache_entry():
    cfg = config.resolve({})["model"]
    keys = {complexity.cache_key(cfg, 4, (512, 512)), complexity.cache_key(cfg, 5, (512, 512)),
            complexity.cache_key(cfg, 4, (512, 1024)), complexity.cache_key(cfg, 4, (1024, 512)),
            complexity.cache_key({**cfg, "decoder_channels": 32}, 4, (512, 512)),
            complexity.cache_key({**cfg, "backbone": "resnet50"}, 4, (512, 512)),
            complexity.cache_key({**cfg, "head": "parametric"}, 4, (512, 512)),
            complexity.cache_key({**cfg, "aux_head": True}, 4, (512, 512))}
    assert len(keys) == 8
    assert complexity.cache_key({**cfg, "pretrained": "w.pth", "prototype": {**cfg["prototype"], "gamma": 0.9}}, 4, (512, 512)) \
        == complexity.cache_key(cfg, 4, (512, 512))


def test_a_field_added_to_the_model_section_keeps_every_cache_entry_unless_set():
    cfg = config.resolve({"model": {"decoder": "upernet"}})["model"]
    before_decoder_options = {k: v for k, v in cfg.items() if k != "decoder_options"}
    assert complexity.cache_key(cfg, 4, (512, 512)) == complexity.cache_key(before_decoder_options, 4, (512, 512))
    fewer = config.resolve({"model": {"decoder": "upernet", "decoder_options": {"upernet": {"pool_scales": [1, 3]}}}})
    assert complexity.cache_key(fewer["model"], 4, (512, 512)) != complexity.cache_key(cfg, 4, (512, 512))


def test_the_count_cache_is_never_read_or_written_through_a_symbolic_link(tmp_path):
    cfg = config.resolve({"model": {"decoder_channels": 16}})["model"]
    model = build_model(cfg, 4)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked_folder = tmp_path / "results" / ".complexity"
    linked_folder.parent.mkdir()
    linked_folder.symlink_to(elsewhere)
    with pytest.raises(LinkRefused, match="symbolic link"):
        complexity.measure_cached(model, cfg, 4, (32, 32), linked_folder)
    assert list(elsewhere.iterdir()) == []

    cache = tmp_path / "cache"
    counts = complexity.measure_cached(model, cfg, 4, (32, 32), cache)
    (entry,) = cache.iterdir()
    planted = tmp_path / "planted.json"
    planted.write_text(json.dumps({**counts, "macs": 1}))
    entry.unlink()
    entry.symlink_to(planted)
    with pytest.raises(LinkRefused, match="symbolic link"):
        complexity.measure_cached(model, cfg, 4, (32, 32), cache)
    assert json.loads(planted.read_text())["macs"] == 1
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temp file left


# ---- a stop in each phase after training, in process -----------------------------------------

@pytest.mark.slow
def test_a_stop_in_each_phase_after_training_interrupts_and_a_rerun_does_not_train_again(tmp_path, monkeypatch):
    monkeypatch.setattr(phases, "STOP_POLL_S", 0.0)  # ask at every chance: each phase is short
    spec = tiny_spec(train={"iterations": 6})  # past speed.WARMUP_STEPS: a throughput is measured
    whole = engine.run(spec, tmp_path / "whole")
    run_dir = tmp_path / "stopped"
    for phase in AFTER:
        with pytest.raises(phases.Interrupted, match=f"stopped while {phase}, after training"):
            engine.run(spec, run_dir, stop=lambda phase=phase: phase_of(run_dir) == phase)
        assert not (run_dir / "metrics.json").exists()
        assert (run_dir / "checkpoints" / "iter_00000006.pt").is_file()
    metrics = engine.run(spec, run_dir)
    assert len(training_lines(run_dir)) == 6  # trained once, in the first attempt
    assert (run_dir / "train.log").read_text().count("resumed from iteration 6") == len(AFTER)
    assert metrics["mIoU"] == whole["mIoU"] and metrics["history"] == whole["history"]
    assert metrics["train_s_per_iter"] is not None  # the throughput of the attempt that trained


# ---- a stop of `harness run` after training -------------------------------------------------

def session_processes(sid: int) -> list[str]:
    """'pid cmdline' of each live process in session `sid` (the harness's, started with its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(f"{entry.name} {cmdline}")
    return found


def slow_after_training(tmp_path: Path, name: str, num_val: int, complexity_size: int, fps_images: int,
                        num_workers: int) -> tuple[Path, Store, str]:
    """A one-cell sweep of two training iterations whose evaluation (`num_val` images), MAC count (at
    `complexity_size` squared) or FPS timing (`fps_images`: its time limit) takes seconds; `num_workers`
    loader processes."""
    path = tiny_experiment(tmp_path, name, {"train.seed": [0]}, None, 2, {"backend": "local", "jobs": 1})
    doc = yaml.safe_load(path.read_text())
    doc["base"]["data"]["synthetic"]["num_val"] = num_val
    doc["base"]["data"]["num_workers"] = num_workers
    doc["base"]["eval"].update(complexity_size=[complexity_size, complexity_size], fps_images=fps_images)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    (run,) = matrix.load(path).runs
    return path, Store(tmp_path / "results", name), run.run_id


@pytest.mark.slow
@pytest.mark.parametrize("sig, phase, group, terminal, num_val, complexity_size, fps_images, num_workers", [
    # Ctrl-C: the terminal signals the whole process group, the evaluation's loader processes too,
    # during a slow evaluation (many images)
    (signal.SIGINT, "evaluating", True, True, 100, 64, 2, 2),
    # a batch system's SIGTERM to the harness alone, during a slow MAC count (a large input)
    (signal.SIGTERM, "counting MACs", False, True, 4, 1024, 2, 0),
    # a dropped ssh session: SIGHUP, and the terminal is gone (writes to it fail), during the FPS timing
    # (seconds: its time limit); to the harness alone, so the run stops only if the harness stops it
    (signal.SIGHUP, "timing FPS", False, False, 4, 64, 10**6, 0),
], ids=["sigint-group-evaluating", "sigterm-counting-macs", "sighup-no-terminal-timing-fps"])
def test_a_signal_after_training_cancels_the_run_leaves_no_process_and_a_rerun_does_not_train(
        tmp_path, sig, phase, group, terminal, num_val, complexity_size, fps_images, num_workers):
    path, store, rid = slow_after_training(tmp_path, "stop", num_val, complexity_size, fps_images, num_workers)
    run_dir = store.run_dir(rid)
    proc = start_harness(path, store.root)
    out = err = ""
    try:
        wait_for(lambda: phase_of(run_dir) == phase or proc.poll() is not None, TIMEOUT, f"the phase {phase}")
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)  # well inside the phase
        if not terminal:
            proc.stdout.close()
            proc.stderr.close()
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        if terminal:
            out, err = proc.communicate(timeout=TIMEOUT)
        else:
            proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if terminal:  # without one, harness.cli's last words fail and so does its exit code (exit 1)
        assert proc.returncode == 128 + sig, out + err
    status = store.status(rid)
    assert status["state"] == "cancelled", status
    assert f"stopped while {phase}, after training" in status["error"], status
    assert not (run_dir / "metrics.json").exists()
    assert (run_dir / "checkpoints" / "iter_00000002.pt").is_file()
    left = session_processes(proc.pid)
    if left:  # the forkserver and the resource tracker end once their last client has: give them a moment
        time.sleep(3)
        left = session_processes(proc.pid)
    assert left == [], left

    again = run_harness("run", path, results=store.root, timeout=TIMEOUT)
    assert again.returncode == 0, again.stdout + again.stderr
    assert store.is_done(rid)
    log = (run_dir / "train.log").read_text()
    assert len(training_lines(run_dir)) == 2 and "resumed from iteration 2" in log
    assert json.loads((run_dir / "metrics.json").read_text())["iterations"] == 2


# ---- the threads of a cell rerun alone ------------------------------------------------------

def test_threads_depend_on_executor_jobs_and_the_cores_not_on_how_many_runs_this_invocation_has():
    cores = local.cores()
    for count in range(1, 6):
        assert local._sizes(count, {"jobs": 2})[1] == max(1, cores // 2), count
        assert local._sizes(count, {})[1] == 1, count  # jobs unset: one run per core
        assert local._sizes(count, {"jobs": 2})[0] == min(2, count)  # at once: no more than there are


@pytest.mark.slow
@pytest.mark.skipif(local.cores() < 2, reason="on one core every run has one thread whatever the jobs")
def test_a_cell_rerun_alone_gets_the_threads_the_sweep_gave_it_and_repeats_its_numbers(tmp_path):
    path = tiny_experiment(tmp_path, "threads", {"train.seed": [0, 1]}, None, 2, {"backend": "local", "jobs": 2},
                           threads=None)  # the backend decides the threads
    results = tmp_path / "results"
    store = Store(results, "threads")
    rid = matrix.load(path).runs[0].run_id
    sweep = run_harness("run", path, results=results, timeout=TIMEOUT)
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    first = json.loads((store.run_dir(rid) / "metrics.json").read_text())
    dry = run_harness("run", path, "--only", rid, "--force", "--dry-run", results=results, timeout=TIMEOUT)
    assert f"{local.cores() // 2} torch thread(s) each" in dry.stdout, dry.stdout
    alone = run_harness("run", path, "--only", rid, "--force", results=results, timeout=TIMEOUT)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    again = json.loads((store.run_dir(rid) / "metrics.json").read_text())
    assert again["threads"] == first["threads"] == local.cores() // 2
    assert again["mIoU"] == first["mIoU"] and again["history"] == first["history"]
