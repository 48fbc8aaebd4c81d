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
import logging
import math
import os
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

from . import checkpoint, config, diagnostics, distributed, provenance
from .data import build_dataset
from .data.sampler import TrainBatches
from .inference import evaluate
from .io import Guard, atomic_write_json, atomic_write_yaml, read_yaml, refuse_link
from .models import build_model
from .optim import build_optimizer, build_scheduler, train_step
from .phases import Interrupted, Phases, after_training, checked
from .recorder import Recorder, attach_log

log = logging.getLogger("protoseg")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the run stops, the last checkpoint stays valid."""


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


def run(spec: dict, run_dir: str | Path, stop: Callable[[], bool] | None = None,
        board_dir: str | Path | None = None, guard: Guard = contextlib.nullcontext,
        complexity_cache: str | Path | None = None) -> dict:
    """Train, evaluate and write `run_dir/metrics.json`; return the metrics. TensorBoard event files go
    to `board_dir` (default `run_dir/tensorboard`). The MAC and FLOP counts are kept in, and taken from,
    the folder `complexity_cache` when one is given (the harness gives one per results folder).

    `stop` is polled once per iteration: when it returns True a checkpoint is
    written and `phases.Interrupted` is raised (preemption, SIGTERM, a Tune stop). After the last iteration
    (its checkpoint written) it is polled between the phases that follow training and inside them
    (each evaluation batch, each module of the MAC count, each FPS image, each prediction image; at most
    every phases.STOP_POLL_S seconds), so a stop there raises `Interrupted` too and a rerun redoes only those
    phases. progress.json's "phase" and a train.log line name each phase as it starts (phases.PHASES).
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
            handler = attach_log(run_dir, guard)
        return _train(spec, run_dir, stop or (lambda: False), rank, world,
                      Path(board_dir) if board_dir else run_dir / "tensorboard", guard,
                      Path(complexity_cache) if complexity_cache else None)
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


def _device(name: str, world: int) -> torch.device:
    device = distributed.pick_device(name)
    if world > 1 and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())  # LOCAL_RANK's, set by init_from_env
    return device


def _build_model(mcfg: dict, num_classes: int, world: int, device: torch.device, main: bool) -> torch.nn.Module:
    model = build_model(mcfg, num_classes)
    synced = distributed.sync_batchnorm(model, mcfg["norm"], world, device.type)
    if synced and main:
        log.info("SyncBN: %d BatchNorm layers synchronised across %d processes", synced, world)
    return model.to(device)


def _train_loader(train_set, dcfg: dict, tcfg: dict, start: int, rank: int, world: int) -> DataLoader:
    return DataLoader(
        train_set, num_workers=dcfg["num_workers"], worker_init_fn=_loader_worker_init,
        batch_sampler=TrainBatches(len(train_set), dcfg["batch_size"], tcfg["seed"], start, tcfg["iterations"],
                                   rank, world),
        # its own generator: creating the loader must not draw from the global RNG
        generator=torch.Generator().manual_seed(tcfg["seed"]))


def _run_eval(model, val_set, spec: dict, device, check: Callable[..., None] | None = None) -> dict:
    """The model's evaluation on `val_set`; `check` (phases.checked) before each batch."""
    distributed.broadcast_from_main(model.buffers())  # BN statistics are rank-local (see distributed.wrap_ddp)
    loader = DataLoader(val_set, batch_size=spec["data"]["val_batch_size"], num_workers=spec["data"]["num_workers"],
                        worker_init_fn=_loader_worker_init)
    batches = loader if check is None else checked(loader, check)
    return evaluate(model, batches, spec["eval"], val_set.num_classes, val_set.class_names, device)


def _train(spec: dict, run_dir: Path, stop: Callable[[], bool], rank: int, world: int, board_dir: Path,
           guard, complexity_cache: Path | None) -> dict:
    mcfg, dcfg, tcfg = spec["model"], spec["data"], spec["train"]
    main, iterations = rank == 0, tcfg["iterations"]
    device = _device(tcfg["device"], world)
    _configure_torch(tcfg)
    _seed_everything(tcfg["seed"])
    train_set, val_set = build_dataset(dcfg, "train"), build_dataset(dcfg, "val")
    model = _build_model(mcfg, train_set.num_classes, world, device, main)
    optimizer = build_optimizer(model, tcfg)
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
    loader = _train_loader(train_set, dcfg, tcfg, start, rank, world)
    record = Recorder(run_dir, guard, board_dir, tcfg, dcfg["batch_size"], start, history, evals, throughput, main)

    def save(it: int) -> None:
        rngs = {"rank_rngs": distributed.all_gather(checkpoint.rng_state())} if world > 1 else {}
        if main:
            checkpoint.save(run_dir, it, {
                **{key: obj.state_dict() for key, obj in stateful.items()},
                "history": history, "evals": evals, "train_time": train_time, "threads": threads,
                "throughput": record.throughput(), **rngs},
                tcfg["keep_checkpoints"], guard)
        distributed.barrier()  # no rank goes on, or leaves on Interrupted, before the checkpoint is on disk

    net.train()
    tick = time.perf_counter()
    for it, (images, labels) in enumerate(loader, start=start):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        value, parts = train_step(net, optimizer, scaler, images, labels, mcfg, use_amp,
                                  inspect=lambda loss, terms: _mean_loss(loss, terms, run_dir, it + 1, tcfg))
        scheduler.step()
        done = it + 1
        now = time.perf_counter()
        train_time += now - tick
        record.step(done, now - tick, value, parts, optimizer.param_groups[0]["lr"])
        tick = now
        if tcfg["eval_interval"] and done % tcfg["eval_interval"] == 0 and done < iterations:
            record.evaluation(done, _run_eval(model, val_set, spec, device))
            tick = time.perf_counter()
        interrupted = distributed.any_rank(stop())
        if done % tcfg["checkpoint_interval"] == 0 or done == iterations or interrupted:
            save(done)
            tick = time.perf_counter()
        if interrupted and done < iterations:
            record.close()
            raise Interrupted(f"{run_dir}: stopped at iteration {done}; checkpoint saved")
    record.close_bar()

    phases = Phases(run_dir, guard, stop, record.progress)
    metrics = after_training(phases, lambda check: _run_eval(model, val_set, spec, device, check), model, val_set,
                             spec, device, record, train_time, complexity_cache, world, code)
    if main:
        atomic_write_json(run_dir / "metrics.json", metrics, guard)
        if not tcfg["keep_checkpoints_when_done"]:
            checkpoint.remove_all(run_dir, guard)
        log.info("done: mIoU %s%s", metrics["mIoU"], diagnostics.describe(metrics))
    distributed.barrier()  # on every rank, returning means metrics.json is on disk
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protoseg.engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", help="run spec YAML (default: the built-in synthetic quick run)")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, logs, metrics.json)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec field, e.g. --set model.head=parametric")
    parser.add_argument("--complexity-cache", metavar="DIR",
                        help="a folder that keeps the MAC and FLOP counts for other runs of the same architecture "
                             "(harness sweeps use RESULTS/.complexity); default: counted, not kept")
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
        metrics = run(spec, args.out, stop=lambda: requested["stop"], complexity_cache=args.complexity_cache)
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
