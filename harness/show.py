"""What `harness show`, `diff` and `evaluate` print about single runs."""
from __future__ import annotations

import os
from pathlib import Path

from protoseg import config

from .labels import settings_text
from .selection import spec_fields
from .store import Store, load_spec, read_json


def show_lines(store: Store, rid: str, row: dict, log_lines: int) -> list[str]:
    """One run: its settings, state, the spec fields off the defaults, provenance, error, log tail."""
    folder = store.run_dir(rid)
    metrics = read_json(folder / "metrics.json") or {}
    spec = spec_fields(load_spec(folder) or {})
    defaults = config.flatten(config.baseline())
    lines = [f"run {rid} of sweep {store.sweep}: {folder}",
             f"settings:   {settings_text(row.get('settings') or {}) or '(none recorded)'}",
             f"state:      {row['state']}" + (f", mIoU {row['mIoU']:.2f}" if row.get("mIoU") is not None else "")
             + (f", {row['attempts']} attempt(s)" if row.get("attempts") else "")
             + (f", {row['backend']} job {row['job_id']}" if row.get("job_id") else "")
             + (f" on {row['host']}" if row.get("host") else "")]
    progress = row.get("progress") or {}
    if progress:
        phase = progress.get("phase") or ""
        lines.append(f"progress:   {progress['iteration']}/{progress['iterations']} {phase}".rstrip())
    changed = {path: value for path, value in spec.items() if defaults.get(path, object()) != value}
    lines.append("spec (fields that differ from the defaults; spec.yaml has them all):")
    lines += [f"  {path}: {value!r}" for path, value in changed.items()] or ["  (none)"]
    provenance = metrics.get("provenance")
    if provenance:
        lines.append("provenance of the attempt that finished:")
        lines += [f"  {key}: {value}" for key, value in _flat_items(provenance)]
    elif metrics:
        lines.append(f"provenance: not recorded (finished before runs kept it); torch {metrics.get('torch')}, "
                     f"host {metrics.get('host')}, {metrics.get('threads')} thread(s)")
    if row.get("error"):
        lines.append(f"error:      {row['error']}")
        if (folder / "error.txt").is_file():
            lines.append(f"  traceback: {folder / 'error.txt'}")
    log = folder / "train.log"
    if log.is_file():
        lines.append(f"train.log (last {log_lines} lines):")
        lines += [f"  {line}" for line in tail_lines(log, log_lines)]
    return lines


def tail_lines(path: Path, count: int, window: int = 65536) -> list[str]:
    """The last `count` lines of a text file, reading at most its last `window` bytes."""
    with open(path, "rb") as file:
        file.seek(max(0, file.seek(0, os.SEEK_END) - window))
        return file.read().decode("utf-8", "replace").splitlines()[-count:] if count > 0 else []


def _flat_items(mapping: dict, prefix: str = ""):
    for key, value in mapping.items():
        if isinstance(value, dict):
            yield from _flat_items(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def diff_text(store_a: Store, a: str, store_b: Store, b: str) -> str:
    """The spec fields in which two runs differ, as a table (or a line saying there are none)."""
    specs = [spec_fields(load_spec(s.run_dir(r)) or {}) for s, r in ((store_a, a), (store_b, b))]
    paths = [p for p in dict.fromkeys([*specs[0], *specs[1]]) if specs[0].get(p) != specs[1].get(p)]
    names = [f"{store_a.sweep}/{a}", f"{store_b.sweep}/{b}"]
    if not paths:
        return f"{names[0]} and {names[1]}: the same spec"
    from tabulate import tabulate

    return tabulate([[p, repr(specs[0].get(p)), repr(specs[1].get(p))] for p in paths],
                    headers=["spec field", *names], tablefmt="simple")


def evaluation_lines(run_dir: Path, path: Path, metrics: dict) -> list[str]:
    protocol = metrics["eval"]
    lines = [f"{run_dir}: iteration {metrics['iteration']} on split {metrics['split']}"
             f"{' of ' + str(metrics['data_root']) if metrics['data_root'] else ''}, {protocol['mode']}, "
             f"scales {protocol['scales']}{', flip' if protocol['flip'] else ''}"]
    width = max(map(len, metrics["per_class_iou"]), default=0)
    lines += [f"  {name:<{width}}  IoU {_pct(iou)}  Acc {_pct(metrics['per_class_acc'][name])}"
              for name, iou in metrics["per_class_iou"].items()]
    if "prototypes_used" in metrics:
        lines.append(f"prototype diversity {metrics['prototype_diversity']}, prototypes used "
                     f"{metrics['prototypes_used']} of {metrics['prototypes_per_class']} per class")
    lines += [f"aAcc {_pct(metrics['aAcc'])}  mAcc {_pct(metrics['mAcc'])}", f"wrote {path}",
              f"mIoU {_pct(metrics['mIoU'])}"]
    return lines


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"
