"""Train and evaluate ONE run; checkpoint and resume exactly.

    python -m protoseg.engine --spec run.yaml --out DIR [--set train.iterations=100]

writes DIR/metrics.json as its last act. Started again with the same command
after a kill, it resumes from the newest valid checkpoint in DIR and ends with
the same weights and metrics as a run that was never interrupted.
"""
from __future__ import annotations

import argparse
import io
import logging
import math
import os
import platform
import random
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import checkpoint, complexity, config
from .data import build_dataset
from .data.transforms import eval_transform
from .inference import evaluate, predict_logits
from .io import atomic_write_bytes, atomic_write_json, atomic_write_yaml, read_yaml
from .losses import total_loss
from .models import build_model

log = logging.getLogger("protoseg")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the run stops, the last checkpoint stays valid."""


class Interrupted(RuntimeError):
    """`stop()` asked the run to end early; a checkpoint of the current iteration is on disk."""


class TrainBatches:
    """Batch sampler of (index, sample_seed) pairs for iterations [start, end).

    Each epoch is a permutation drawn from (seed, epoch) and each sample's
    augmentation seed is (seed, epoch, position), so the data of iteration i
    depends on nothing but i: a resumed run sees exactly the batches that an
    uninterrupted one would, whatever the worker count.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start: int, end: int):
        self.size, self.batch_size, self.seed, self.start, self.end = size, batch_size, seed, start, end
        self._perm: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size))
        return self._perm[1]

    def __iter__(self):
        for it in range(self.start, self.end):
            batch = []
            for pos in range(it * self.batch_size, (it + 1) * self.batch_size):
                epoch, i = divmod(pos, self.size)
                batch.append((int(self._permutation(epoch)[i]), (self.seed, epoch, i)))
            yield batch

    def __len__(self):
        return self.end - self.start


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _configure_torch(train_cfg: dict) -> None:
    threads = train_cfg["threads"] or os.environ.get("SLURM_CPUS_PER_TASK")
    if threads:
        torch.set_num_threads(int(threads))
    if train_cfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _attach_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _save_predictions(model, dataset, spec: dict, device, run_dir: Path, count: int = 4) -> None:
    """A few validation images with label and prediction, for the report's figures."""
    images, labels, preds = [], [], []
    for i in range(min(count, len(dataset))):
        image, label = dataset.load(i)
        tensor, _ = eval_transform(image, label)
        logits = predict_logits(model.eval(), tensor[None].to(device), spec["eval"], dataset.num_classes)
        images.append(image)
        labels.append(np.asarray(label, dtype=np.uint8))
        preds.append(logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=np.stack(images), labels=np.stack(labels), preds=np.stack(preds))
    atomic_write_bytes(run_dir / "predictions.npz", buffer.getvalue())


def run(spec: dict, run_dir: str | Path, stop: Callable[[], bool] | None = None) -> dict:
    """Train, evaluate and write `run_dir/metrics.json`; return the metrics.

    `stop` is polled once per iteration: when it returns True a checkpoint is
    written and `Interrupted` is raised (preemption, SIGTERM, a Tune stop).
    """
    spec = config.resolve(spec)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(run_dir / "spec.yaml", spec)
    handler = _attach_log(run_dir)
    try:
        return _train(spec, run_dir, stop or (lambda: False))
    except Exception:
        log.exception("run failed")
        raise
    finally:
        log.removeHandler(handler)
        handler.close()


def _train(spec: dict, run_dir: Path, stop: Callable[[], bool]) -> dict:
    mcfg, dcfg, tcfg = spec["model"], spec["data"], spec["train"]
    device = pick_device(tcfg["device"])
    _configure_torch(tcfg)
    _seed_everything(tcfg["seed"])
    train_set, val_set = build_dataset(dcfg, "train"), build_dataset(dcfg, "val")
    model = build_model(mcfg, train_set.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=tcfg["lr"], momentum=tcfg["momentum"],
                                weight_decay=tcfg["weight_decay"])
    iterations = tcfg["iterations"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: max(1 - it / iterations, 0.0) ** tcfg["poly_power"])
    use_amp = tcfg["amp"] and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start, history, evals, train_time = 0, [], [], 0.0
    state = checkpoint.load_latest(run_dir)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start, history, evals, train_time = state["iteration"], state["history"], state["evals"], state["train_time"]
        checkpoint.set_rng_state(state["rng"])
        log.info("resumed from iteration %d", start)

    def save(it: int) -> None:
        checkpoint.save(run_dir, it, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "history": history, "evals": evals, "train_time": train_time}, tcfg["keep_checkpoints"])

    def run_eval() -> dict:
        loader = DataLoader(val_set, batch_size=dcfg["val_batch_size"], num_workers=dcfg["num_workers"])
        return evaluate(model, loader, spec["eval"], val_set.num_classes, val_set.class_names, device)

    loader = DataLoader(
        train_set, num_workers=dcfg["num_workers"],
        batch_sampler=TrainBatches(len(train_set), dcfg["batch_size"], tcfg["seed"], start, iterations),
        # its own generator: creating the loader must not draw from the global RNG
        generator=torch.Generator().manual_seed(tcfg["seed"]))
    bar = tqdm(total=iterations, initial=start, disable=not tcfg["progress"], dynamic_ncols=True,
               desc=run_dir.name, file=sys.stderr,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)  # a log file gets a line per 30 s
    model.train()
    tick = time.perf_counter()
    for it, (images, labels) in enumerate(loader, start=start):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            out = model(images, labels)
        loss, parts = total_loss(out, labels, mcfg)
        value = loss.item()
        if not math.isfinite(value):
            detail = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
            raise NonFiniteLoss(f"{run_dir}: loss is {value} at iteration {it + 1} ({detail}); "
                                f"lower train.lr (now {tcfg['lr']}) or check the data. "
                                f"The last checkpoint before it is kept.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        done = it + 1
        now = time.perf_counter()
        train_time += now - tick
        tick = now
        bar.update(1)
        if done % tcfg["log_interval"] == 0 or done == iterations:
            record = {"iteration": done, "loss": value, "lr": optimizer.param_groups[0]["lr"],
                      **{k: v.item() for k, v in parts.items()}}
            history.append(record)
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{record['lr']:.2e}")
            log.info("iter %d/%d loss %.4f lr %.3e", done, iterations, value, record["lr"])
            atomic_write_json(run_dir / "progress.json", {
                "iteration": done, "iterations": iterations, "loss": value,
                "it_per_s": bar.format_dict.get("rate"),
                "time": time.time()})
        if tcfg["eval_interval"] and done % tcfg["eval_interval"] == 0 and done < iterations:
            result = run_eval()
            evals.append({"iteration": done, "mIoU": result["mIoU"]})
            log.info("iter %d eval mIoU %s", done, result["mIoU"])
            tick = time.perf_counter()
        interrupted = stop()
        if done % tcfg["checkpoint_interval"] == 0 or done == iterations or interrupted:
            save(done)
            tick = time.perf_counter()
        if interrupted and done < iterations:
            bar.close()
            raise Interrupted(f"{run_dir}: stopped at iteration {done}; checkpoint saved")
    bar.close()

    eval_start = time.perf_counter()
    result = run_eval()
    eval_time = time.perf_counter() - eval_start
    size = tuple(spec["eval"]["complexity_size"])
    metrics = {
        **result,
        **complexity.measure(model, size),
        "evals": evals + [{"iteration": iterations, "mIoU": result["mIoU"]}],
        "history": history,
        "iterations": iterations,
        "num_classes": val_set.num_classes,
        "class_names": list(val_set.class_names),
        "train_time_s": train_time,
        "eval_time_s": eval_time,
        "throughput_img_s": iterations * dcfg["batch_size"] / max(train_time, 1e-9),
        "spec": spec,
        "device": str(device),
        "host": platform.node(),
        "torch": torch.__version__,
    }
    _save_predictions(model, val_set, spec, device, run_dir)
    atomic_write_json(run_dir / "metrics.json", metrics)
    log.info("done: mIoU %s", metrics["mIoU"])
    return metrics


def _assign(spec: dict, pairs) -> dict:
    """Set each dotted path of `pairs` in the nested dict `spec`."""
    for path, value in pairs:
        node = spec
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return spec


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
        spec = config.resolve(_assign(raw, config.parse_assignments(args.set)), source=args.spec or "--set")
    except config.SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    requested = {"stop": False}

    def on_signal(signum, frame):
        requested["stop"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGUSR1, on_signal)
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
