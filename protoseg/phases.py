"""What follows a run's last iteration, phase by phase (PHASES: the final evaluation, the MAC count, the
FPS timing, the predictions), and how a stop ends a run: `Interrupted`, in training or in any phase."""
from __future__ import annotations

import io
import logging
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import complexity, distributed, speed
from .data.transforms import eval_transform
from .inference import predict_logits
from .io import atomic_write_bytes, atomic_write_json
from .recorder import Recorder, eval_record
from .speed import fps_budget, inference_fps, peak_memory

log = logging.getLogger("protoseg")

STOP_POLL_S = 0.2  # after training, `stop` is asked at most this often inside a phase (it may stat a file)
# what progress.json's "phase" says: training, then each phase after it in this order
PHASES = ("training", "evaluating", "counting MACs", "timing FPS", "saving predictions")


class Interrupted(RuntimeError):
    """`stop()` asked the run to end early; a checkpoint of the current iteration is on disk."""


class Phases:
    """The phases after training: each one's start goes to progress.json ("phase", with the fields of
    the last training record, on the main process) and to train.log, after asking `stop`; `check` asks
    it inside a phase. A stop raises Interrupted; the last iteration's checkpoint is on disk by then."""

    def __init__(self, run_dir: Path, guard, stop: Callable[[], bool], progress: dict | None):
        self.run_dir, self.guard, self.stop, self.progress = run_dir, guard, stop, progress
        self.phase, self.began, self.asked = "training", time.perf_counter(), 0.0
        self.seconds: dict[str, float] = {}

    def _stopped(self, every_rank: bool = False) -> None:
        self.asked = time.perf_counter()
        stop = self.stop()
        if distributed.any_rank(stop) if every_rank else stop:
            when = "after training" if self.phase == "training" else f"while {self.phase}, after training"
            iteration = f" ({self.progress['iteration']})" if self.progress else ""
            raise Interrupted(f"{self.run_dir}: stopped {when}; the checkpoint of its last iteration{iteration} "
                              f"is kept, so a rerun redoes only what follows training")

    def check(self, now: bool = False) -> None:
        """Ask `stop` (at most every STOP_POLL_S seconds, unless `now`); Interrupted when it says stop."""
        if now or time.perf_counter() - self.asked >= STOP_POLL_S:
            self._stopped()

    def end(self) -> None:
        now = time.perf_counter()
        if self.phase != "training":
            self.seconds[self.phase] = now - self.began
        self.began = now

    def start(self, phase: str, detail: str = "", every_rank: bool = False) -> None:
        """`every_rank`: all processes of the run start this phase together and stop together (a collective:
        the phase itself begins with one)."""
        self.end()
        self._stopped(every_rank)  # a stop asked during the phase before
        self.phase = phase
        log.info("%s %s", phase, detail)
        if self.progress is not None:
            atomic_write_json(self.run_dir / "progress.json",
                              {**self.progress, "phase": phase, "time": time.time()}, self.guard)


def checked(batches, check: Callable[..., None]):
    """`batches`, with `check()` before each is fetched and handed on (it may raise to stop). A fetch that
    fails while a stop is asked is the stop's doing (Ctrl-C reaches the loader's worker processes too, and
    one that starts at that moment dies of it): `check(now=True)` raises the stop instead of the failure."""
    iterator = iter(batches)
    while True:
        check()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception:
            check(now=True)
            raise
        yield batch


def after_training(phases: Phases, run_eval: Callable[[Callable], dict], model, val_set, spec: dict, device,
                   record: Recorder, train_time: float, complexity_cache: Path | None, world: int,
                   code: dict | None) -> dict:
    """The final evaluation (`run_eval(check)`) on every process, then, on the main one, the MAC count (kept
    in `complexity_cache`, a folder, when one is given), the FPS timing and the predictions; the run's
    metrics (metrics.json). Closes the record's TensorBoard. A stop on any process raises Interrupted on every
    one."""
    val_split, board, main = spec["data"]["val_split"], record.board, record.main
    try:
        phases.start("evaluating", f"the final model on the {len(val_set)} image(s) of '{val_split}'",
                     every_rank=True)
        result = run_eval(phases.check)
        if board is not None:
            board.evaluation(spec["train"]["iterations"], result)
        if result["mIoU"] is None:  # written as done, such a run would be redone and fail the same forever
            raise ValueError(f"no pixel of the '{val_split}' split has a class label (all 255, "
                             f"ignored?): its mIoU is undefined; check its label files")
        counts, fps = {}, {}
        if main:  # the other ranks wait for rank 0 in the last any_rank below
            counts = _count(phases, model, spec["model"], val_set.num_classes, tuple(spec["eval"]["complexity_size"]),
                            complexity_cache)
            fps = _time_fps(phases, model, val_set, spec["eval"], device, train_time)
            phases.start("saving predictions", "of a few validation images")
            _save_predictions(model, val_set, spec, device, phases.run_dir, phases.guard, check=phases.check)
        phases.end()
        stopped = None
    except Interrupted as err:
        stopped = err
    finally:
        if board is not None:
            board.close()
    # every rank stops, or none: one rank alone past here would wait at the barrier for the others forever
    if distributed.any_rank(stopped is not None):
        raise stopped or Interrupted(f"{phases.run_dir}: another process of the run was stopped after training; "
                                     f"the checkpoint of iteration {spec['train']['iterations']} is kept")
    return _metrics(spec, val_set, result, counts, fps, record, train_time, phases.seconds, device, world, code)


def _count(phases: Phases, model, model_cfg: dict, num_classes: int, size: tuple[int, int],
           cache: Path | None) -> dict:
    counts = complexity.lookup(model_cfg, num_classes, size, cache)
    if counts is None:
        phases.start("counting MACs", f"and FLOPs at {size[0]}x{size[1]}"
                     + (f" (kept for the results folder in {cache})" if cache else ""))
        return complexity.measure_cached(model, model_cfg, num_classes, size, cache, phases.guard, phases.check)
    log.info("MACs and FLOPs at %dx%d: from %s", *size, cache)
    return counts


def _time_fps(phases: Phases, model, val_set, eval_cfg: dict, device, train_time: float) -> dict:
    fps_s = fps_budget(eval_cfg["fps_max_s"], train_time)
    if eval_cfg["fps_images"] and len(val_set):
        phases.start("timing FPS", f"at batch 1 for at most {fps_s:.1f} s (eval.fps_max_s "
                     f"{eval_cfg['fps_max_s']:g}, {speed.FPS_TRAIN_FRACTION:g} x {train_time:.1f} s of "
                     f"training, at least {speed.FPS_MIN_S:g} s) after {eval_cfg['fps_warmup']} untimed")
    return inference_fps(model, val_set, eval_cfg, val_set.num_classes, device, fps_s, phases.check)


def _save_predictions(model, dataset, spec: dict, device, run_dir: Path, guard, count: int = 4,
                     check: Callable[[], None] = lambda: None) -> None:
    """A few validation images with label and prediction, for the report's figures; spread over the split,
    since neighbouring frames of a video dataset look alike. `check()` before each image (it may raise)."""
    images, labels, preds = [], [], []
    for i in np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int).tolist():
        check()
        image, label = dataset.load(i)
        tensor, _ = eval_transform(image, label, dataset.mean, dataset.std)
        logits = predict_logits(model.eval(), tensor[None].to(device), spec["eval"], dataset.num_classes)
        images.append(image)
        labels.append(np.asarray(label, dtype=np.uint8))
        preds.append(logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=np.stack(images), labels=np.stack(labels), preds=np.stack(preds))
    atomic_write_bytes(run_dir / "predictions.npz", buffer.getvalue(), guard)


def _metrics(spec: dict, val_set, result: dict, counts: dict, fps: dict, record: Recorder, train_time: float,
             phase_seconds: dict, device: torch.device, world: int, code: dict | None) -> dict:
    """metrics.json: the final evaluation's `result`, the complexity `counts`, the records of training, the
    speed (`fps`, inference) and where and with what it ran."""
    iterations, batch_size = spec["train"]["iterations"], spec["data"]["batch_size"]
    return {
        **result,
        **counts,
        "evals": record.evals + [eval_record(iterations, result)],
        "history": record.history,
        "iterations": iterations,
        "num_classes": val_set.num_classes,
        "class_names": list(val_set.class_names),
        "train_time_s": train_time,
        "eval_time_s": phase_seconds.get("evaluating"),
        "after_training_s": phase_seconds,
        "throughput_img_s": iterations * batch_size / max(train_time, 1e-9),
        **record.throughput(),
        **fps,
        **peak_memory(device),
        "spec": spec,
        "device": str(device),
        "host": platform.node(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "world_size": world,
        "provenance": code,
    }
