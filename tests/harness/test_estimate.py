"""`harness estimate FILE`: each distinct model timed once, wall time per cell, device-hours, time limits."""
from __future__ import annotations

import re

import pytest

from conftest import run_harness, tiny_experiment
from harness import estimate, matrix


def _experiment(tmp_path, iterations=100):
    return tiny_experiment(tmp_path, "est", {"model.head": ["parametric", "nonparametric"], "train.seed": [0, 1]},
                           None, iterations, {"backend": "local", "jobs": 1})


def test_each_distinct_model_is_timed_once_and_every_cell_gets_its_iterations_times_it(tmp_path, monkeypatch):
    timed = []

    def fake_time_step(spec, batch, steps, crop=None):  # the timing itself is tested below, on a real model
        timed.append((spec["model"]["head"], batch, steps))
        return 0.5 if spec["model"]["head"] == "parametric" else 2.0

    monkeypatch.setattr(estimate, "time_step", fake_time_step)
    sweep = matrix.load(_experiment(tmp_path, 200), [("executor.backend", "slurm"), ("executor.tasks_per_node", 2),
                                                ("executor.timeout_min", 3), ("executor.max_timeouts", 1)])
    rows = estimate.estimate(sweep, steps=2, progress=False)
    assert sorted(timed) == [("nonparametric", 1, 2), ("parametric", 1, 2)]  # batch 2 over 2 processes
    assert {r["s_per_iter"] for r in rows} == {0.5, 2.0} and len(rows) == 4
    slow = [r for r in rows if r["s_per_iter"] == 2.0]
    assert all(r["wall_h"] == pytest.approx(200 * 2.0 / 3600) and r["device_h"] == 2 * r["wall_h"] for r in slow)
    text = estimate.render(rows, "cpu")
    assert text.count("WARNING") == 2  # 400 s > 3 min x 2 for the nonparametric cells only
    assert f"total: {sum(r['device_h'] for r in rows):.1f} device-hours" in text


def test_a_smaller_batch_and_crop_are_scaled_back_per_image_and_pixel(tmp_path, monkeypatch):
    timed = []

    def per_pixel(spec, batch, steps, crop=None):  # a device where time is linear in images and pixels
        timed.append((batch, crop))
        return 1e-6 * batch * crop[0] * crop[1]

    monkeypatch.setattr(estimate, "time_step", per_pixel)
    sweep = matrix.load(_experiment(tmp_path), [("base.data.crop_size", [512, 1024]), ("base.data.batch_size", 8)])
    full = estimate.estimate(sweep, steps=1, progress=False)
    small = estimate.estimate(sweep, steps=1, batch=1, crop_scale=0.5, progress=False)
    assert timed[-1] == (1, (256, 512)) and timed[0] == (8, (512, 1024))
    assert [r["s_per_iter"] for r in small] == pytest.approx([r["s_per_iter"] for r in full])
    assert full[0]["s_per_iter"] == pytest.approx(8 * 512 * 1024e-6)
    assert "1 x 256x512 -> 8 x 512x1024" in estimate.render(small, "cpu")
    assert "timed smaller" not in estimate.render(full, "cpu")
    assert estimate.scaled_crop((32, 48), 0.5) == (32, 48) and estimate.scaled_crop((512, 512), 0.3) == (160, 160)


def test_a_model_that_cannot_train_is_reported_and_the_others_are_estimated(tmp_path, monkeypatch):
    def fails_for_prototypes(spec, batch, steps, crop=None):
        if spec["model"]["head"] == "nonparametric":
            raise ValueError("Expected more than 1 value per channel when training")
        return 0.5

    monkeypatch.setattr(estimate, "time_step", fails_for_prototypes)
    rows = estimate.estimate(matrix.load(_experiment(tmp_path, 3600)), steps=1, progress=False)
    text = estimate.render(rows, "cpu")
    assert text.count("FAILED: ValueError: Expected more than 1 value per channel") == 2
    assert "total: 1.0 device-hours" in text and "2 cell(s) FAILED to train, left out" in text
    assert [r["wall_h"] for r in rows if not r["error"]] == [0.5, 0.5]


def test_a_crop_scale_outside_0_1_is_refused(tmp_path):
    proc = run_harness("estimate", _experiment(tmp_path), "--crop-scale", "2", results=tmp_path / "results")
    assert proc.returncode != 0 and "--crop-scale 2.0 is not valid; valid: a number in (0, 1]" in proc.stderr


@pytest.mark.slow
def test_the_command_times_real_steps_and_prints_every_cell(tmp_path):
    proc = run_harness("estimate", _experiment(tmp_path, 1000), "--steps", "1", results=tmp_path / "results")
    assert proc.returncode == 0, proc.stderr
    cells = re.findall(r"^  [0-9a-f]{12} .* ([0-9.]+) s/iter x 1000 = +([0-9.]+) h$", proc.stdout, re.M)
    assert len(cells) == 4 and all(float(s) > 0 for s, _ in cells)
    assert "2 distinct model(s), timed on cpu" in proc.stdout and "device-hours" in proc.stdout
    assert not (tmp_path / "results").exists()  # an estimate writes nothing
