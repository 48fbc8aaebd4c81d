"""One run end to end: metrics, checkpoints, exact resume after a real kill."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, SHARED_DATA, kill_at, tiny_spec
from protoseg import checkpoint, engine, phases


def _final_weights(run_dir: Path) -> dict:
    return checkpoint.load_latest(run_dir)["model"]


def test_run_writes_metrics_and_keeps_newest_checkpoints(tmp_path, spec):
    metrics = engine.run(spec, tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["mIoU"] == metrics["mIoU"] and 0 <= saved["mIoU"] <= 100
    for key in ("aAcc", "mAcc", "per_class_iou", "params_learnable", "params_total", "macs", "flops",
                "train_time_s", "throughput_img_s", "history"):
        assert key in saved
    assert saved["params_total"] > saved["params_learnable"]  # the prototypes are not learnable
    assert [h["iteration"] for h in saved["history"]] == list(range(1, 7))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_00000004.pt",
                                                                            "iter_00000006.pt"]
    assert yaml.safe_load((tmp_path / "spec.yaml").read_text())["model"]["backbone"] == "resnet18"
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_run_told_not_to_keep_them_deletes_its_checkpoints_once_done(tmp_path, spec):
    dropped = {**spec, "train": {**spec["train"], "keep_checkpoints_when_done": False}}
    with pytest.raises(phases.Interrupted):  # interrupted, it keeps its checkpoint to resume from
        engine.run(dropped, tmp_path, stop=lambda: True)
    assert checkpoint.load_latest(tmp_path)["iteration"] == 1
    metrics = engine.run(dropped, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["mIoU"] == metrics["mIoU"]
    assert not (tmp_path / "checkpoints").exists()


def test_same_spec_same_seed_gives_identical_results(tmp_path):
    spec = tiny_spec(train={"iterations": 3, "checkpoint_interval": 3, "log_interval": 1,
                            "progress": False, "threads": 1})
    a = engine.run(spec, tmp_path / "a")
    b = engine.run(spec, tmp_path / "b")
    assert a["history"] == b["history"] and a["mIoU"] == b["mIoU"]


def test_stop_request_checkpoints_and_resume_matches_uninterrupted(tmp_path, spec):
    whole = engine.run(spec, tmp_path / "whole")
    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] == 3

    with pytest.raises(phases.Interrupted):
        engine.run(spec, tmp_path / "split", stop=stop_after_three)
    assert (tmp_path / "split" / "checkpoints" / "iter_00000003.pt").exists()
    resumed = engine.run(spec, tmp_path / "split")
    assert resumed["history"] == whole["history"]
    assert resumed["mIoU"] == whole["mIoU"] and resumed["confusion"] == whole["confusion"]
    a, b = _final_weights(tmp_path / "whole"), _final_weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_newest_checkpoint_is_skipped(tmp_path, spec):
    engine.run(spec, tmp_path)
    newest = tmp_path / "checkpoints" / "iter_00000006.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    assert checkpoint.load_latest(tmp_path)["iteration"] == 4


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    spec = tiny_spec(train={"lr": 1e12, "iterations": 30, "checkpoint_interval": 100, "progress": False,
                            "threads": 1})
    with pytest.raises(engine.NonFiniteLoss, match=r"loss is (nan|inf) at iteration \d+.*train\.lr"):
        engine.run(spec, tmp_path)
    assert not (tmp_path / "metrics.json").exists()
    assert "NonFiniteLoss" in (tmp_path / "train.log").read_text()


def _engine_cmd(spec_file: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "protoseg.engine", "--spec", str(spec_file), "--out", str(out)]


@pytest.mark.slow
def test_killed_subprocess_resumes_to_the_same_weights_and_metrics(tmp_path):
    spec = tiny_spec(train={"iterations": 16, "checkpoint_interval": 2, "log_interval": 1, "progress": False,
                            "threads": 1})
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(_engine_cmd(spec_file, tmp_path / "whole"), check=True, env=env, cwd=ROOT,
                   capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_engine_cmd(spec_file, killed), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_at(proc, killed / "checkpoints" / "iter_00000006.pt")
    assert not (killed / "metrics.json").exists()
    done = subprocess.run(_engine_cmd(spec_file, killed), env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resumed from iteration" in (killed / "train.log").read_text()

    whole_m = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    killed_m = json.loads((killed / "metrics.json").read_text())
    for key in ("mIoU", "aAcc", "per_class_iou", "confusion", "history"):
        assert killed_m[key] == whole_m[key], key
    a, b = _final_weights(tmp_path / "whole"), _final_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_rejects_an_unknown_key_before_running(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  hed: parametric\n")
    result = subprocess.run(_engine_cmd(bad, tmp_path / "out"), cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr and "model.hed" in result.stderr and "did you mean 'head'" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not (SHARED_DATA / "camvid-240x180").is_dir(),
                    reason="../shared/data/camvid-240x180 is not present")
def test_a_run_on_real_camvid_images(tmp_path):
    root = SHARED_DATA / "camvid-240x180"
    spec = tiny_spec(data={"dataset": "camvid", "root": str(root), "crop_size": [64, 64], "batch_size": 2},
                     train={"iterations": 2, "checkpoint_interval": 2, "progress": False, "threads": 2})
    metrics = engine.run(spec, tmp_path)
    assert metrics["num_classes"] == 11 and metrics["class_names"][0] == "Sky"
    assert sum(map(sum, metrics["confusion"])) > 101 * 180 * 240 * 0.8  # every val frame, void left out
