"""What a run records of its training as it goes: the history of logged iterations and the evaluations
(both kept in its checkpoints), the time of each step, train.log, the progress bar, TensorBoard and
progress.json."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm

from . import diagnostics
from .board import Board
from .io import LostClaim, atomic_write_json, open_append
from .speed import StepTimes

log = logging.getLogger("protoseg")


class _RunLog(logging.FileHandler):
    """train.log: never through a symbolic link, and each line written inside the run's `guard` (a
    line the guard refuses, once another process took the run over, is dropped)."""

    def __init__(self, path: Path, guard):
        self.guard = guard
        super().__init__(path, delay=False)

    def _open(self):
        return open_append(self.baseFilename)

    def emit(self, record):
        try:
            with self.guard():
                super().emit(record)
        except LostClaim:
            pass
        except Exception:  # a log line never stops training
            self.handleError(record)


def attach_log(run_dir: Path, guard) -> logging.Handler:
    handler = _RunLog(run_dir / "train.log", guard)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def eval_record(iteration: int, result: dict) -> dict:
    """One entry of metrics.json's `evals`: the mIoU and, for a prototype head, the diagnostics' means."""
    return {"iteration": iteration, "mIoU": result["mIoU"],
            **{key: result[key] for key in diagnostics.EVAL_KEYS if key in result}}


class Recorder:
    """The records of a run's training from iteration `start` on, continuing the `history`, `evals` and
    `throughput` of its checkpoint. Every process keeps them; the main one alone shows the bar (train.progress)
    and writes TensorBoard events to `board_dir` and progress.json."""

    def __init__(self, run_dir: Path, guard, board_dir: Path, tcfg: dict, batch_size: int, start: int,
                 history: list, evals: list, throughput: dict | None, main: bool):
        self.run_dir, self.guard, self.batch_size, self.main = run_dir, guard, batch_size, main
        self.iterations, self.log_interval = tcfg["iterations"], tcfg["log_interval"]
        self.history, self.evals, self.earlier_throughput = history, evals, throughput
        self.bar = tqdm(total=self.iterations, initial=start, disable=not (tcfg["progress"] and main),
                        dynamic_ncols=True, desc=run_dir.name, file=sys.stderr,
                        mininterval=1.0 if sys.stderr.isatty() else 30.0)  # a log file gets a line per 30 s
        self.steps = StepTimes()
        self.board = Board(board_dir, purge_step=start + 1 if start else None) if main else None
        # progress.json's fields at the last logged iteration (from the history on a resume past the last);
        # None on the other processes
        self.progress = {"iteration": start, "iterations": self.iterations, "it_per_s": None,
                         **({"loss": history[-1]["loss"]} if history else {})} if main else None

    def step(self, done: int, seconds: float, loss: float, parts: dict, lr: float) -> None:
        """Iteration `done` took `seconds`; every train.log_interval iterations and at the last, its record."""
        self.steps.add(seconds)
        self.bar.update(1)
        if done % self.log_interval and done != self.iterations:
            return
        self.history.append({"iteration": done, "loss": loss, "lr": lr, **parts})
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        log.info("iter %d/%d loss %.4f lr %.3e", done, self.iterations, loss, lr)
        if self.board is not None:
            self.board.train(done, loss, parts, lr, self.steps.recent(self.batch_size))
        if self.progress is not None:
            self.progress = {"iteration": done, "iterations": self.iterations, "loss": loss,
                             "it_per_s": self.bar.format_dict.get("rate"), "phase": "training"}
            atomic_write_json(self.run_dir / "progress.json", {**self.progress, "time": time.time()}, self.guard)

    def evaluation(self, done: int, result: dict) -> None:
        """An evaluation during training, after iteration `done`."""
        self.evals.append(eval_record(done, result))
        if self.board is not None:
            self.board.evaluation(done, result)
        log.info("iter %d eval mIoU %s%s", done, result["mIoU"], diagnostics.describe(result))

    def throughput(self) -> dict:
        """This attempt's training throughput; the checkpoint's, when it has one and this attempt trained no
        step (its first stopped after training)."""
        if self.earlier_throughput is not None and not self.steps.times:
            return self.earlier_throughput
        return self.steps.summary(self.batch_size)

    def close_bar(self) -> None:
        self.bar.close()

    def close(self) -> None:
        self.bar.close()
        if self.board is not None:
            self.board.close()
