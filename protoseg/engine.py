"""Train and evaluate ONE run; checkpoint and resume exactly.

    python -m protoseg.engine --spec run.yaml --out DIR [--set train.iterations=100]
    torchrun --nproc-per-node 4 -m protoseg.engine ...   (DDP; data.batch_size is the global batch)

writes DIR/metrics.json as its last act. Started again with the same command
after a kill, it resumes from the newest valid checkpoint in DIR and ends with
the same weights and metrics as a run that was never interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import platform
import random
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import checkpoint, complexity, config, diagnostics, distributed, provenance, speed
from .board import Board
from .data import build_dataset
from .data.sampler import TrainBatches
from .data.transforms import eval_transform
from .inference import evaluate, predict_logits
from .io import (Guard, LostClaim, atomic_write_bytes, atomic_write_json, atomic_write_yaml, open_append, read_yaml,
                 refuse_link)
from .models import build_model
from .optim import build_optimizer, build_scheduler, train_step
from .speed import StepTimes, fps_budget, inference_fps, peak_memory

log = logging.getLogger("protoseg")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the run stops, the last checkpoint stays valid."""


class Interrupted(RuntimeError):
    """`stop()` asked the run to end early; a checkpoint of the current iteration is on disk."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rank_seed(seed: int, rank: int, iteration: int) -> int:
    """A seed of its own for each rank: independent dropout masks and Gumbel draws, as in one big batch."""
    return int(np.random.SeedSequence([seed, rank, iteration]).generate_state(1)[0])


def _check_world(spec: dict, world: int) -> None:
    batch_size = spec["data"]["batch_size"]
    if batch_size % world:
        raise ValueError(f"data.batch_size is {batch_size}, the global batch, which {world} processes "
                         f"cannot split evenly: make it a multiple of the world size {world}")


def _loader_worker_init(worker_id: int) -> None:
    """A DataLoader worker process ignores the terminal's SIGINT and SIGHUP, which reach the whole process
    group (Ctrl-C, a dropped ssh session): the run's own process stops the run at its next check and ends
    its loaders; a worker killed by it would fail the run instead ("DataLoader worker exited unexpectedly")."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _configure_torch(train_cfg: dict) -> None:
    threads = train_cfg["threads"] or os.environ.get("SLURM_CPUS_PER_TASK")
    if threads:
        torch.set_num_threads(int(threads))
    if train_cfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


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


def _attach_log(run_dir: Path, guard) -> logging.Handler:
    handler = _RunLog(run_dir / "train.log", guard)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


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


def run(spec: dict, run_dir: str | Path, stop: Callable[[], bool] | None = None,
        board_dir: str | Path | None = None, guard: Guard = contextlib.nullcontext) -> dict:
    """Train, evaluate and write `run_dir/metrics.json`; return the metrics. TensorBoard event files go
    to `board_dir` (default `run_dir/tensorboard`).

    `stop` is polled once per iteration: when it returns True a checkpoint is
    written and `Interrupted` is raised (preemption, SIGTERM, a Tune stop). After the last iteration
    (its checkpoint written) it is polled between the phases that follow training and inside them
    (each evaluation batch, each module of the MAC count, each FPS image, each prediction image; at most
    every STOP_POLL_S seconds), so a stop there raises `Interrupted` too and a rerun redoes only those
    phases. progress.json's "phase" and a train.log line name each phase as it starts (PHASES).
    Started as one of WORLD_SIZE > 1 processes (torchrun, or SLURM through
    submitit), it trains with DistributedDataParallel and rank 0 alone writes.
    `guard`: a context manager each write to `run_dir` happens in (io.atomic_write_bytes); it raises
    io.LostClaim, out of this function, once the writer no longer owns the run (the harness's fencing).
    The run folder and its checkpoints folder must not be symbolic links (io.LinkRefused).
    """
    spec = config.resolve(spec)
    run_dir = Path(run_dir)
    rank, world = distributed.init_from_env(distributed.pick_device(spec["train"]["device"]).type)
    handler = None
    try:
        _check_world(spec, world)
        if rank == 0:
            refuse_link(run_dir, "run folder")
            run_dir.mkdir(parents=True, exist_ok=True)
            refuse_link(run_dir / "checkpoints", "checkpoints folder")
            atomic_write_yaml(run_dir / "spec.yaml", spec, guard)
            handler = _attach_log(run_dir, guard)
        return _train(spec, run_dir, stop or (lambda: False), rank, world,
                      Path(board_dir) if board_dir else run_dir / "tensorboard", guard)
    except Exception as err:
        if isinstance(err, Interrupted):
            log.info("%s", err)
        else:
            log.exception("run failed")
        if world > 1:
            # Free the DDP reducer that the traceback's frames hold before destroy() frees the gloo
            # group: the other way round, the group's teardown can deadlock on the GIL (pytorch#56297).
            traceback.clear_frames(err.__traceback__)
        raise
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        distributed.destroy()


def _resume(run_dir: Path, stateful: dict, rank: int, world: int,
            seed: int) -> tuple[int, list, list, float, dict | None]:
    """Load the newest checkpoint into `stateful` and this rank's random state; (iteration, history, evals,
    time, the training throughput that the checkpoint's attempt measured or None)."""
    state = checkpoint.load_latest(run_dir)
    if state is not None:
        for key, obj in stateful.items():
            obj.load_state_dict(state[key])
        rngs = state.get("rank_rngs", [state["rng"]])
        if len(rngs) == world:
            checkpoint.set_rng_state(rngs[rank])
        else:
            log.warning("the checkpoint is of %d process(es), this run has %d: same data, other random draws "
                        "(not an exact resume)", len(rngs), world)
            _seed_everything(_rank_seed(seed, rank, state["iteration"]))
        first = state.get("threads")  # absent from checkpoints of older versions
        if first and first != torch.get_num_threads():  # another thread count sums in another order
            log.info("keeps %d thread(s) of its first attempt for an exact resume (this attempt was given %d)",
                     first, torch.get_num_threads())
            torch.set_num_threads(first)
        log.info("resumed from iteration %d", state["iteration"])
    starts = distributed.all_gather(0 if state is None else state["iteration"])
    if len(set(starts)) > 1:
        raise RuntimeError(f"{run_dir}: the ranks found different newest checkpoints (iterations {starts}); "
                           f"is {run_dir / 'checkpoints'} on a file system that every rank sees alike?")
    if state is None:
        return 0, [], [], 0.0, None
    return state["iteration"], state["history"], state["evals"], state["train_time"], state.get("throughput")


def _mean_loss(loss: torch.Tensor, parts: dict, run_dir: Path, iteration: int, tcfg: dict) -> tuple[float, dict]:
    """The loss and its parts, each the mean over ranks: it is logged, and a NaN on any rank stops every rank
    at once (NonFiniteLoss, before the step that would spoil the weights)."""
    value, *part_values = distributed.all_mean(torch.stack([loss, *parts.values()]).detach()).tolist()
    part_values = dict(zip(parts, part_values))
    if not math.isfinite(value):
        detail = ", ".join(f"{k}={v:.4g}" for k, v in part_values.items())
        raise NonFiniteLoss(f"{run_dir}: loss is {value} at iteration {iteration} ({detail}); "
                            f"lower train.lr (now {tcfg['lr']}) or check the data. "
                            f"The last checkpoint before it is kept.")
    return value, part_values


def _train(spec: dict, run_dir: Path, stop: Callable[[], bool], rank: int, world: int, board_dir: Path,
           guard) -> dict:
    mcfg, dcfg, tcfg = spec["model"], spec["data"], spec["train"]
    main = rank == 0
    device = distributed.pick_device(tcfg["device"])
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # LOCAL_RANK's, set by init_from_env
    _configure_torch(tcfg)
    _seed_everything(tcfg["seed"])
    train_set, val_set = build_dataset(dcfg, "train"), build_dataset(dcfg, "val")
    model = build_model(mcfg, train_set.num_classes)
    synced = distributed.sync_batchnorm(model, mcfg["norm"], world, device.type)
    if synced and main:
        log.info("SyncBN: %d BatchNorm layers synchronised across %d processes", synced, world)
    model = model.to(device)
    optimizer = build_optimizer(model, tcfg)
    iterations = tcfg["iterations"]
    scheduler = build_scheduler(optimizer, tcfg)
    use_amp = tcfg["amp"] and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    if world > 1:
        _seed_everything(_rank_seed(tcfg["seed"], rank, 0))

    stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    start, history, evals, train_time, throughput = _resume(run_dir, stateful, rank, world, tcfg["seed"])
    code = provenance.provenance() if main else None  # of the code this attempt imported, read as it starts
    threads = torch.get_num_threads()  # the first attempt's, once _resume has set it
    net = distributed.wrap_ddp(model, device) if world > 1 else model

    def save(it: int) -> None:
        rngs = {"rank_rngs": distributed.all_gather(checkpoint.rng_state())} if world > 1 else {}
        if main:
            checkpoint.save(run_dir, it, {
                **{key: obj.state_dict() for key, obj in stateful.items()},
                "history": history, "evals": evals, "train_time": train_time, "threads": threads,
                "throughput": steps.summary(dcfg["batch_size"]) if steps.times else throughput, **rngs},
                tcfg["keep_checkpoints"], guard)
        distributed.barrier()  # no rank goes on, or leaves on Interrupted, before the checkpoint is on disk

    def run_eval(check: Callable[[], None] | None = None) -> dict:
        distributed.broadcast_from_main(model.buffers())  # BN statistics are rank-local (see distributed.wrap_ddp)
        loader = DataLoader(val_set, batch_size=dcfg["val_batch_size"], num_workers=dcfg["num_workers"],
                            worker_init_fn=_loader_worker_init)
        batches = loader if check is None else _checked(loader, check)
        return evaluate(model, batches, spec["eval"], val_set.num_classes, val_set.class_names, device)

    loader = DataLoader(
        train_set, num_workers=dcfg["num_workers"], worker_init_fn=_loader_worker_init,
        batch_sampler=TrainBatches(len(train_set), dcfg["batch_size"], tcfg["seed"], start, iterations,
                                   rank, world),
        # its own generator: creating the loader must not draw from the global RNG
        generator=torch.Generator().manual_seed(tcfg["seed"]))
    bar = tqdm(total=iterations, initial=start, disable=not (tcfg["progress"] and main), dynamic_ncols=True,
               desc=run_dir.name, file=sys.stderr,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)  # a log file gets a line per 30 s
    net.train()
    steps = StepTimes()
    board = Board(board_dir, purge_step=start + 1 if start else None) if main else None
    # progress.json's fields at the last logged iteration (from the history on a resume past the last)
    progress = {"iteration": start, "iterations": iterations, "it_per_s": None,
                **({"loss": history[-1]["loss"]} if history else {})}
    tick = time.perf_counter()
    for it, (images, labels) in enumerate(loader, start=start):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        value, part_values = train_step(net, optimizer, scaler, images, labels, mcfg, use_amp,
                                        inspect=lambda loss, parts: _mean_loss(loss, parts, run_dir, it + 1, tcfg))
        scheduler.step()
        done = it + 1
        now = time.perf_counter()
        train_time += now - tick
        steps.add(now - tick)
        tick = now
        bar.update(1)
        if done % tcfg["log_interval"] == 0 or done == iterations:
            record = {"iteration": done, "loss": value, "lr": optimizer.param_groups[0]["lr"],
                      **part_values}
            history.append(record)
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{record['lr']:.2e}")
            log.info("iter %d/%d loss %.4f lr %.3e", done, iterations, value, record["lr"])
            if board is not None:
                board.train(done, value, part_values, record["lr"], steps.recent(dcfg["batch_size"]))
            if main:
                progress = {"iteration": done, "iterations": iterations, "loss": value,
                            "it_per_s": bar.format_dict.get("rate"), "phase": "training"}
                atomic_write_json(run_dir / "progress.json", {**progress, "time": time.time()}, guard)
        if tcfg["eval_interval"] and done % tcfg["eval_interval"] == 0 and done < iterations:
            result = run_eval()
            evals.append(_eval_record(done, result))
            if board is not None:
                board.evaluation(done, result)
            log.info("iter %d eval mIoU %s%s", done, result["mIoU"], diagnostics.describe(result))
            tick = time.perf_counter()
        interrupted = distributed.any_rank(stop())
        if done % tcfg["checkpoint_interval"] == 0 or done == iterations or interrupted:
            save(done)
            tick = time.perf_counter()
        if interrupted and done < iterations:
            bar.close()
            if board is not None:
                board.close()
            raise Interrupted(f"{run_dir}: stopped at iteration {done}; checkpoint saved")
    bar.close()

    after = _Phases(run_dir, guard, stop, progress if main else None)
    try:
        after.start("evaluating", f"the final model on the {len(val_set)} image(s) of '{dcfg['val_split']}'",
                    every_rank=True)
        result = run_eval(after.check)
        if board is not None:
            board.evaluation(iterations, result)
        if result["mIoU"] is None:  # written as done, such a run would be redone and fail the same forever
            raise ValueError(f"no pixel of the '{dcfg['val_split']}' split has a class label (all 255, "
                             f"ignored?): its mIoU is undefined; check its label files")
        counts, fps = {}, {}
        if main:  # the other ranks wait for rank 0 in the last any_rank below
            size = tuple(spec["eval"]["complexity_size"])
            cache = _complexity_cache(run_dir)
            counts = complexity.lookup(mcfg, val_set.num_classes, size, cache)
            if counts is None:
                after.start("counting MACs", f"and FLOPs at {size[0]}x{size[1]}"
                            + (f" (kept for the results folder in {cache})" if cache else ""))
                counts = complexity.measure_cached(model, mcfg, val_set.num_classes, size, cache, guard,
                                                   after.check)
            else:
                log.info("MACs and FLOPs at %dx%d: from %s", *size, cache)
            fps_s = fps_budget(spec["eval"]["fps_max_s"], train_time)
            if spec["eval"]["fps_images"] and len(val_set):
                after.start("timing FPS", f"at batch 1 for at most {fps_s:.1f} s (eval.fps_max_s "
                            f"{spec['eval']['fps_max_s']:g}, {speed.FPS_TRAIN_FRACTION:g} x {train_time:.1f} s of "
                            f"training, at least {speed.FPS_MIN_S:g} s) after {spec['eval']['fps_warmup']} untimed")
            fps = inference_fps(model, val_set, spec["eval"], val_set.num_classes, device, fps_s, after.check)
            after.start("saving predictions", "of a few validation images")
            _save_predictions(model, val_set, spec, device, run_dir, guard, check=after.check)
        after.end()
        stopped = None
    except Interrupted as err:
        stopped = err
    finally:
        if board is not None:
            board.close()
    # every rank stops, or none: one rank alone past here would wait at the barrier for the others forever
    if distributed.any_rank(stopped is not None):
        raise stopped or Interrupted(f"{run_dir}: another process of the run was stopped after training; "
                                     f"the checkpoint of iteration {iterations} is kept")
    if throughput is not None and not steps.times:  # this attempt trained no step (its first stopped after)
        step_summary = throughput
    else:
        step_summary = steps.summary(dcfg["batch_size"])
    metrics = {
        **result,
        **counts,
        "evals": evals + [_eval_record(iterations, result)],
        "history": history,
        "iterations": iterations,
        "num_classes": val_set.num_classes,
        "class_names": list(val_set.class_names),
        "train_time_s": train_time,
        "eval_time_s": after.seconds.get("evaluating"),
        "after_training_s": after.seconds,
        "throughput_img_s": iterations * dcfg["batch_size"] / max(train_time, 1e-9),
        **step_summary,
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
    if main:
        atomic_write_json(run_dir / "metrics.json", metrics, guard)
        log.info("done: mIoU %s%s", metrics["mIoU"], diagnostics.describe(result))
    distributed.barrier()  # on every rank, returning means metrics.json is on disk
    return metrics


STOP_POLL_S = 0.2  # after training, `stop` is asked at most this often inside a phase (it may stat a file)
# what progress.json's "phase" says: training, then each phase after it in this order
PHASES = ("training", "evaluating", "counting MACs", "timing FPS", "saving predictions")


class _Phases:
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


def _checked(batches, check: Callable[..., None]):
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


def _complexity_cache(run_dir: Path) -> Path | None:
    """The results folder's cache of complexity counts (RESULTS/.complexity, one for all its sweeps: one
    architecture is counted once however many sweeps and runs it has), for a run of a harness sweep
    (RESULTS/SWEEP/RUN_ID, SWEEP holding sweep.json); None for a run elsewhere."""
    sweep = run_dir.resolve().parent
    return sweep.parent / ".complexity" if (sweep / "sweep.json").is_file() else None


def _eval_record(iteration: int, result: dict) -> dict:
    """One entry of metrics.json's `evals`: the mIoU and, for a prototype head, the diagnostics' means."""
    return {"iteration": iteration, "mIoU": result["mIoU"],
            **{key: result[key] for key in diagnostics.EVAL_KEYS if key in result}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protoseg.engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", help="run spec YAML (default: the built-in synthetic quick run)")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, logs, metrics.json)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec field, e.g. --set model.head=parametric")
    args = parser.parse_args(argv)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)  # the progress bar shows the rest; train.log has it all
    logging.basicConfig(handlers=[console], format="%(levelname)s %(message)s")
    try:
        raw = (read_yaml(args.spec, "spec file", config.SpecError) or {}) if args.spec else {}
        for path, value in config.parse_assignments(args.set):
            config.set_path(raw, path, value)
        spec = config.resolve(raw, source=args.spec or "--set")
    except config.SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    requested = {"stop": False}

    def on_signal(signum, frame):
        requested["stop"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        metrics = run(spec, args.out, stop=lambda: requested["stop"])
    except Interrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return 143
    except (NonFiniteLoss, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.out}: mIoU {metrics['mIoU']}  aAcc {metrics['aAcc']}  "
          f"train {metrics['train_time_s']:.1f}s  ({metrics['throughput_img_s']:.1f} img/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
