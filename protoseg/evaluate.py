"""Score a finished run's final weights on another split, data root or inference protocol, without training.

The scores go beside the run's own metrics.json (never into it), in a file named after the split, the
protocol and, when it is not the run's own, the data root: eval-test-whole.json,
eval-val-slide-ms50_100_150-flip-1a2b3c4d.json.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from . import checkpoint, config
from .distributed import pick_device
from .data import build_dataset
from .inference import evaluate
from .io import atomic_write_json, refuse_link
from .models import build_model
from .registry import NEEDS_ROOT

# the spec fields an evaluation may change: where the data is, how inference runs, on what
SETTINGS = config.tagged(config.EVALUATION)


class EvaluationError(ValueError):
    """The run cannot be evaluated (not finished, final weights missing) or a setting is invalid."""


def evaluate_run(run_dir: str | Path, split: str | None = None, overrides: dict | None = None) -> tuple[Path, dict]:
    """Evaluate the final checkpoint of `run_dir` on `split` (default: the run's val split) with
    `overrides` ({dotted path of SETTINGS: value}); write the metrics atomically and return (file, metrics)."""
    run_dir = Path(run_dir)
    finished = _finished(run_dir)
    spec = _spec(finished["spec"], overrides or {}, run_dir / "metrics.json")
    split = split or spec["data"]["val_split"]
    dataset = _dataset(spec["data"], split)
    state = _final_state(run_dir, spec["train"]["iterations"])
    device = pick_device(spec["train"]["device"])
    # the trained weights replace any pretrained ones: the backbone's weight file is not needed
    model = build_model({**spec["model"], "pretrained": None}, dataset.num_classes)
    model.load_state_dict(state["model"])
    model.to(device)
    loader = DataLoader(dataset, batch_size=spec["data"]["val_batch_size"], num_workers=spec["data"]["num_workers"])
    start = time.perf_counter()
    with _threads(state.get("threads")):
        result = evaluate(model, loader, spec["eval"], dataset.num_classes, dataset.class_names, device)
    metrics = {**result, "split": split, "data_root": spec["data"]["root"], "eval": spec["eval"],
               "iteration": state["iteration"], "num_classes": dataset.num_classes,
               "class_names": list(dataset.class_names), "eval_time_s": time.perf_counter() - start,
               "device": str(device)}
    path = run_dir / file_name(split, spec["eval"], spec["data"]["root"], finished["spec"]["data"]["root"])
    refuse_link(run_dir, "run folder")
    atomic_write_json(path, metrics)
    return path, metrics


def file_name(split: str, eval_cfg: dict, root: str | None, own_root: str | None) -> str:
    """eval-<split>-<mode>[-r<long>x<short>][-ms<scales in %>][-flip][-<hash of root>].json; the hash only
    for another root.
    Letters, digits, '_' and '-' only (harness/report.py makes a column of each name)."""
    parts = ["eval", re.sub(r"[^A-Za-z0-9_]+", "_", split), eval_cfg["mode"]]  # '-' separates the parts
    if eval_cfg.get("resize"):  # absent from the eval section of metrics written before it existed
        parts.append("r{}x{}".format(*eval_cfg["resize"]))
    if eval_cfg["scales"] != [1.0]:
        parts.append("ms" + "_".join(f"{round(s * 100)}" for s in eval_cfg["scales"]))
    if eval_cfg["flip"]:
        parts.append("flip")
    if root is not None and (own_root is None or Path(root).resolve() != Path(own_root).resolve()):
        parts.append(hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:8])
    return "-".join(parts) + ".json"


def _finished(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise EvaluationError(f"{run_dir}: the run is not finished (no metrics.json); "
                              f"`harness run` finishes it, then evaluate it")
    try:
        finished = json.loads(path.read_bytes())
    except ValueError as err:
        raise EvaluationError(f"{path} is corrupt ({err}); `harness run` evaluates the run again") from None
    if not isinstance(finished, dict) or not isinstance(finished.get("spec"), dict):
        raise EvaluationError(f"{path} has no 'spec' mapping: not a metrics file of protoseg.engine")
    return finished


def _spec(spec: dict, overrides: dict, source: Path) -> dict:
    """The run's spec, with each override checked as `config` checks a spec field."""
    spec = copy.deepcopy(spec)
    for path, value in overrides.items():
        if path not in SETTINGS:
            raise EvaluationError(f"{path!r} cannot change for an evaluation of a trained run; "
                                  f"valid: {', '.join(SETTINGS)}")
        config.set_path(spec, path, value)
    if "data.root" in overrides and spec["data"]["dataset"] not in NEEDS_ROOT:
        raise EvaluationError(f"data.root: data.dataset {spec['data']['dataset']!r} is not read from a folder; "
                              f"a data root applies to: {', '.join(NEEDS_ROOT)}")
    return config.resolve(spec, source=f"{source} with {', '.join(overrides) or 'no changes'}", stored=True)


def _dataset(data_cfg: dict, split: str):
    """The dataset's split `split`, built in the role ('train' or 'val') whose split it names or else as val."""
    role = "train" if split == data_cfg["train_split"] else "val"
    dataset = build_dataset({**data_cfg, f"{role}_split": split}, role)
    if dataset.split != split:  # a dataset with fixed splits (synthetic) ignores data.<role>_split
        raise EvaluationError(f"data.dataset {data_cfg['dataset']!r} has no split {split!r}; valid: "
                              f"{data_cfg['train_split']}, {data_cfg['val_split']}")
    return dataset


def _final_state(run_dir: Path, iterations: int) -> dict:
    state = checkpoint.load_latest(run_dir)
    if state is None:
        raise EvaluationError(f"{run_dir / 'checkpoints'}: no checkpoint that loads; the final weights are gone")
    if state["iteration"] != iterations:
        raise EvaluationError(f"{run_dir / 'checkpoints'}: the newest checkpoint that loads is of iteration "
                              f"{state['iteration']}, the run ended at {iterations}: its final weights are "
                              f"corrupt or gone")
    return state


@contextlib.contextmanager
def _threads(count: int | None):
    """The run's own thread count while evaluating: another count sums in another order."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
