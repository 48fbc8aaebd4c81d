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

    def fake_time_step(spec, batch, steps):  # the timing itself is tested below, on a real model
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


@pytest.mark.slow
def test_the_command_times_real_steps_and_prints_every_cell(tmp_path):
    proc = run_harness("estimate", _experiment(tmp_path, 1000), "--steps", "1", results=tmp_path / "results")
    assert proc.returncode == 0, proc.stderr
    cells = re.findall(r"^  [0-9a-f]{12} .* ([0-9.]+) s/iter x 1000 = +([0-9.]+) h$", proc.stdout, re.M)
    assert len(cells) == 4 and all(float(s) > 0 for s, _ in cells)
    assert "2 distinct model(s), timed on cpu" in proc.stdout and "device-hours" in proc.stdout
    assert not (tmp_path / "results").exists()  # an estimate writes nothing
