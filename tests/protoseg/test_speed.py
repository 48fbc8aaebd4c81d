"""Speed in every run: training throughput after warm-up, peak memory, inference FPS (protoseg/speed.py)."""
from __future__ import annotations

import json
import time

import pytest
import torch

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


def test_fps_times_only_the_model_and_stops_at_its_time_limit(monkeypatch):
    from protoseg import speed

    loads, calls = [], []

    class Images:
        def __len__(self):
            return 20

        def __getitem__(self, i):
            loads.append(i)
            return torch.full((3, 8, 8), float(i)), None

    def slow_predict(model, image, eval_cfg, num_classes):
        calls.append(int(image[0, 0, 0, 0]))
        time.sleep(0.02)

    monkeypatch.setattr(speed, "predict_logits", slow_predict)
    cfg = {"fps_images": 200, "fps_warmup": 2, "fps_max_s": 0.1}
    out = speed.inference_fps(torch.nn.Identity(), Images(), cfg, 3, torch.device("cpu"))
    assert loads == list(range(speed.PRELOADED))  # loaded once, before the timing
    assert 2 <= out["inference_fps_images"] < 20 and len(calls) == 2 + out["inference_fps_images"]
    assert calls[:10] == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1][:len(calls)]
    assert out["inference_fps"] == pytest.approx(50, rel=0.3)  # 20 ms an image
    unlimited = speed.inference_fps(torch.nn.Identity(), Images(), {**cfg, "fps_images": 3, "fps_max_s": 1e9}, 3,
                                    torch.device("cpu"))
    assert unlimited["inference_fps_images"] == 3
