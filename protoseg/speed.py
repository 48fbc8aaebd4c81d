"""How fast a run is: training throughput after warm-up, peak memory, and inference FPS by the
convention of MMSegmentation's benchmark tool (batch 1, a warm-up, then a fixed count of images, timed
with device synchronisation)."""
from __future__ import annotations

import resource
import time
from typing import Callable

import torch

from .inference import predict_logits

WARMUP_STEPS = 5  # training steps of an attempt left out of its throughput (allocation, autotuning)


class StepTimes:
    """The wall time of each training step of this attempt (a step ends when its loss reached the host)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def add(self, seconds: float) -> None:
        self.times.append(seconds)

    def recent(self, batch_size: int, count: int = 10) -> float | None:
        """Images per second over the last `count` steps (past the warm-up), for live curves."""
        steady = self.times[WARMUP_STEPS:][-count:]
        return batch_size * len(steady) / sum(steady) if steady else None

    def summary(self, batch_size: int) -> dict:
        steady = self.times[WARMUP_STEPS:]
        if not steady:
            return {"train_s_per_iter": None, "train_img_s": None}
        per_iter = sum(steady) / len(steady)
        return {"train_s_per_iter": per_iter, "train_img_s": batch_size / per_iter}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a host clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def images_per_second(infer: Callable[[int], object], count: int, warmup: int, device: torch.device,
                      max_s: float = float("inf"), check: Callable[[], None] | None = None) -> tuple[float, int]:
    """`infer(i)` for i in 0..warmup+count-1: the first `warmup` untimed, the rest timed, synchronised;
    the timing stops early once `max_s` seconds are spent. (images per second, images timed).
    `check()` is called before each image (it may raise to stop the timing)."""
    check = check or (lambda: None)
    for i in range(warmup):
        check()
        infer(i)
    sync(device)
    start, timed = time.perf_counter(), 0
    while timed < count:
        check()
        infer(warmup + timed)
        timed += 1
        if max_s != float("inf") and timed < count:
            sync(device)  # per image, as MMSegmentation's tool does, to know the time spent
            if time.perf_counter() - start >= max_s:
                break
    sync(device)
    return timed / (time.perf_counter() - start), timed


PRELOADED = 8  # validation images held on the device and cycled: decoding and transforms are not timed
FPS_MIN_S = 5.0  # a run's FPS timing may take this many seconds, ...
FPS_TRAIN_FRACTION = 0.1  # ... or this fraction of its training time if longer (fps_budget)


def fps_budget(fps_max_s: float, train_time_s: float) -> float:
    """Seconds the FPS timing of a run may take: max(FPS_MIN_S, FPS_TRAIN_FRACTION x its training time),
    never more than eval.fps_max_s. A run that trained for 10 minutes or more gets fps_max_s (60 s by
    default) as before; a 20-iteration run of a few seconds times for FPS_MIN_S, not a minute (its
    fixed cost after training would otherwise be several times its training). The warm-up images are
    not part of it (eval.fps_warmup, a handful)."""
    return min(fps_max_s, max(FPS_MIN_S, FPS_TRAIN_FRACTION * train_time_s))


def inference_fps(model, dataset, eval_cfg: dict, num_classes: int, device: torch.device,
                  max_s: float | None = None, check: Callable[[], None] | None = None) -> dict:
    """Images per second of the full inference protocol (eval.mode, resize, scales, flip) at batch 1 over
    up to PRELOADED validation images, cycled: eval.fps_warmup untimed, then eval.fps_images timed, or as
    many as `max_s` seconds allow (default eval.fps_max_s; the engine gives fps_budget(...): a CPU would
    take an hour for 200 images at 2048x1024). `check()` is called before each image and may raise to
    stop (a stop of the run)."""
    count, warmup = eval_cfg["fps_images"], eval_cfg["fps_warmup"]
    if not count or len(dataset) == 0:
        return {"inference_fps": None, "inference_fps_images": 0}
    images = []
    for i in range(min(len(dataset), PRELOADED)):
        if check is not None:
            check()
        images.append(dataset[i][0][None].to(device))
    was_training = model.training
    model.eval()

    def infer(i: int) -> None:
        predict_logits(model, images[i % len(images)], eval_cfg, num_classes)

    try:
        fps, timed = images_per_second(infer, count, warmup, device,
                                       eval_cfg["fps_max_s"] if max_s is None else max_s, check)
        return {"inference_fps": fps, "inference_fps_images": timed}
    finally:
        model.train(was_training)


def peak_memory(device: torch.device) -> dict:
    """Peak resident memory of this process (MiB) and, on CUDA, the peak allocated by torch."""
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"peak_rss_mib": rss_mib, "peak_gpu_mib": gpu}
