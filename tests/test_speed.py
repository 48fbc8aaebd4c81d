"""Speed in every run: training throughput after warm-up, peak memory, inference FPS (protoseg/speed.py)."""
from __future__ import annotations

import json

import pytest

from conftest import tiny_spec
from harness import report
from protoseg import engine
from protoseg.speed import WARMUP_STEPS, StepTimes


def test_throughput_leaves_out_the_warm_up_steps():
    steps = StepTimes()
    for seconds in [9.0] * WARMUP_STEPS + [0.5, 1.5]:
        steps.add(seconds)
    assert steps.summary(batch_size=8) == {"train_s_per_iter": 1.0, "train_img_s": 8.0}
    short = StepTimes()
    short.add(1.0)
    assert short.summary(8) == {"train_s_per_iter": None, "train_img_s": None}


@pytest.mark.slow
def test_a_run_records_throughput_memory_and_fps_and_the_report_shows_fps(tmp_path):
    run_dir = tmp_path / "sweep" / "run"
    engine.run(tiny_spec(train={"iterations": 8}, eval={"fps_images": 4, "fps_warmup": 1}), run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_s_per_iter"] > 0 and metrics["train_img_s"] == pytest.approx(2 / metrics["train_s_per_iter"])
    assert metrics["inference_fps"] > 0 and metrics["peak_rss_mib"] > 100 and metrics["peak_gpu_mib"] is None
    frame = report.load_runs([run_dir.parent])
    agg = report.aggregate(frame)
    assert "synthetic FPS" in report.paper_table(agg).columns
    assert "FPS = validation images per second at batch 1" in report.caption(frame, agg)

    off = tmp_path / "sweep2" / "run"
    engine.run(tiny_spec(train={"iterations": 2}, eval={"fps_images": 0}), off)
    assert json.loads((off / "metrics.json").read_text())["inference_fps"] is None
