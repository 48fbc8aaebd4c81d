"""`harness estimate FILE`: how long a sweep will take, before it is submitted.

Each distinct model of the sweep (architecture, class count, crop, per-device batch, optimizer, AMP) is
built once, with random weights, and a few training steps are timed on this machine or GPU at the cell's
real crop and per-device batch (the global batch over the backend's processes per run). Where that
does not fit (table2 on a CPU), a smaller `batch` and a crop scaled by `crop_scale` per side are timed and
the time is scaled per image and per pixel; that flatters a CPU, whose caches suit small tensors (about
27% low for HRNet-W48, see docs/estimate.md). A cell's expected wall time is its iterations x the time per step
(evaluation and start-up left out); its device-hours are that x its processes. Where the backend gives a
run a time limit (SLURM: timeout_min x (max_timeouts + 1)), a cell that cannot finish within it is flagged."""
from __future__ import annotations

import json
import time

import torch
from tqdm import tqdm

from protoseg import config
from protoseg.distributed import pick_device
from protoseg.models import build_model
from protoseg.optim import build_optimizer, train_step
from protoseg.speed import sync

from . import backends
from .labels import settings_text
from .matrix import RunSpec, Sweep


def _key(run: RunSpec, world: int) -> str:
    spec = run.spec
    model = {k: v for k, v in spec["model"].items() if k != "pretrained"}
    return json.dumps([model, config.num_classes(config.flatten(spec)), spec["data"]["crop_size"],
                       spec["data"]["batch_size"] // world, spec["train"]["optimizer"], spec["train"]["amp"],
                       spec["train"]["device"]], sort_keys=True)


def scaled_crop(crop: list[int], scale: float) -> tuple[int, int]:
    """The crop with each side times `scale`, a multiple of 32 (every backbone's stride), at least 64
    (or the side itself, when smaller)."""
    return tuple(min(side, max(64, round(side * scale / 32) * 32)) for side in crop)


def time_step(spec: dict, batch: int, steps: int, crop: tuple[int, int] | None = None) -> float:
    """Seconds per training step (optim.train_step, as the engine takes it: forward, loss, backward,
    optimizer) after one untimed step, at `crop` (default: the spec's)."""
    device = pick_device(spec["train"]["device"])
    k = config.num_classes(config.flatten(spec))
    model = build_model({**spec["model"], "pretrained": None}, k).to(device).train()
    optimizer = build_optimizer(model, spec["train"])
    h, w = crop or spec["data"]["crop_size"]
    images = torch.randn(batch, 3, h, w, device=device)
    labels = torch.randint(0, k, (batch, h, w), device=device)
    amp = spec["train"]["amp"] and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    start = 0.0
    for step in range(steps + 1):
        if step == 1:
            sync(device)
            start = time.perf_counter()
        train_step(model, optimizer, scaler, images, labels, spec["model"], amp)
    sync(device)
    return (time.perf_counter() - start) / steps


def estimate(sweep: Sweep, steps: int = 3, iterations: int | None = None, batch: int | None = None,
             crop_scale: float = 1.0, progress: bool = True) -> list[dict]:
    """One row per cell: run_id, settings, s_per_iter, iterations, wall_h, device_h, limit_h (or None),
    `timed` (batch x crop timed, -> the per-device batch x crop it is scaled to) or None, and `error`: why
    its model could not be timed (s_per_iter, wall_h and device_h are then None), or None."""
    world, limit_min = backends.get(sweep.executor["backend"]).resources(sweep.executor)
    keys = {run.run_id: _key(run, world) for run in sweep.runs}  # each run's spec is built once
    timed: dict[str, tuple[float | None, str | None, str | None]] = {}  # key -> (s per step, scaling, error)
    groups: dict[str, RunSpec] = {}
    for run in sweep.runs:
        groups.setdefault(keys[run.run_id], run)
    for key, run in tqdm(groups.items(), desc="timing each distinct model", unit="model", disable=not progress):
        per_device = max(run.spec["data"]["batch_size"] // world, 1)
        at = min(batch or per_device, per_device)
        crop = tuple(run.spec["data"]["crop_size"])
        small = scaled_crop(crop, crop_scale) if crop_scale != 1 else crop
        factor = per_device / at * (crop[0] * crop[1]) / (small[0] * small[1])
        scaling = (f"{at} x {small[0]}x{small[1]} -> {per_device} x {crop[0]}x{crop[1]}" if factor != 1 else None)
        try:
            timed[key] = (time_step(run.spec, at, steps, small) * factor, scaling, None)
        except Exception as err:  # one model that cannot train at this size does not end the estimate
            timed[key] = (None, scaling, f"{type(err).__name__}: {err}")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the next model is timed without the failed one's memory
    limit = None if limit_min is None else limit_min / 60
    rows = []
    for run in sweep.runs:
        per_iter, scaling, error = timed[keys[run.run_id]]
        its = iterations or run.value("train.iterations")
        wall = None if per_iter is None else its * per_iter / 3600
        rows.append({"run_id": run.run_id, "settings": settings_text(run.settings), "s_per_iter": per_iter,
                     "iterations": its, "wall_h": wall, "device_h": None if wall is None else wall * world,
                     "limit_h": limit, "models": len(groups), "timed": scaling, "error": error})
    return rows


def parallelism(executor: dict, cells: int) -> int:
    """Runs at once: executor.jobs, else what the backend does by default (local: one per core; SLURM's
    array and Ray: every cell at once, as far as the cluster allows)."""
    from .backends.local import cores

    default = cores() if executor.get("backend", "local") == "local" else cells
    return max(1, min(executor.get("jobs") or default, cells))


def wall_clock(hours: list[float], at_once: int) -> float:
    """The sweep's wall-clock hours with `at_once` runs at a time, each next run on the first free slot
    (longest first, as a queue that knows the lengths would do; a lower bound for any other order)."""
    slots = [0.0] * at_once
    for h in sorted(hours, reverse=True):
        slots[slots.index(min(slots))] += h
    return max(slots, default=0.0)


def render(rows: list[dict], device: str, at_once: int = 1) -> str:
    width = max((len(r["settings"]) for r in rows), default=0)
    lines = [f"{len(rows)} cell(s), {rows[0]['models'] if rows else 0} distinct model(s), timed on {device}:"]
    scaled = sorted({r["timed"] for r in rows if r["timed"]})
    if scaled:
        lines.append("  timed smaller and scaled per image and pixel (batch x crop): " + "; ".join(scaled))
    for r in rows:
        if r["error"]:
            lines.append(f"  {r['run_id']}  {r['settings']:<{width}}  FAILED: {r['error']}")
            continue
        flag = ""
        if r["limit_h"] is not None and r["wall_h"] > r["limit_h"]:
            flag = f"  WARNING: over the {r['limit_h']:.1f} h a job gets (timeout_min x (max_timeouts + 1))"
        lines.append(f"  {r['run_id']}  {r['settings']:<{width}}  {r['s_per_iter']:8.3f} s/iter x {r['iterations']}"
                     f" = {r['wall_h']:8.2f} h{flag}")
    total = sum(r["device_h"] for r in rows if not r["error"])
    failed = sum(bool(r["error"]) for r in rows)
    lines.append(f"total: {total:.1f} device-hours (wall x processes per run); evaluation and start-up not included"
                 + (f"; {failed} cell(s) FAILED to train, left out" if failed else ""))
    wall = wall_clock([r["wall_h"] for r in rows if not r["error"]], at_once)
    lines.append(f"wall-clock: {wall:.2f} h with {at_once} run(s) at a time (executor.jobs), queue waits not included")
    return "\n".join(lines)
