"""Every metrics.json of a sweep -> one DataFrame -> the paper's table layout.

Rows: backbone (and decoder) x method; columns: #params (learnable), GMACs,
then per dataset the mIoU (mean ± std over seeds), the gain over the
parametric head and the paper's number where results/paper/ knows it (a
visible mark where it does not: never a made-up number).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from protoseg import config
from protoseg.io import load_yaml

from .selection import spec_fields
from .smoke import SUFFIX as SMOKE_SUFFIX
from .store import inspect_json

REFERENCES = Path(__file__).resolve().parents[1] / "results" / "paper"
REFERENCE = "ref "  # prefix of the aggregate's reference columns
UNKNOWN = "n/a"  # a reference column's number is not transcribed for this row (see results/paper/)
# Spec fields with a place of their own in the table; any other field that varies goes into the method label.
PLACED = {"model.backbone", "model.decoder", "data.dataset", "model.head", "model.prototype.num_prototypes",
          "train.seed"}


class Column(NamedTuple):
    """A column of the table shown only where some run has its metric (the mean over the row's seeds)."""
    header: str  # after the dataset's name: "camvid FPS"
    digits: int
    legend: str  # its sentence in the caption (columns may share one); {devices}: the devices the runs were timed on


# {metrics.json key: Column}: a new column of the table is one entry here. Besides these, one column per
# `harness evaluate` file name (its mIoU).
_PROTOTYPES = ("diversity = mean cosine similarity between a class's prototypes (1 = collapsed); protos used = "
               "prototypes per class nearest to at least one validation pixel of it")
COLUMNS = {
    "prototype_diversity": Column("diversity", 3, _PROTOTYPES),
    "prototypes_used": Column("protos used", 2, _PROTOTYPES),
    "inference_fps": Column("FPS", 1, "FPS = validation images per second at batch 1, the whole inference protocol "
                                      "(MMSegmentation's benchmark convention){devices}"),
}
SUMMARY = ("mIoU", "mAcc", "aAcc", "num_classes", "params_learnable", "params_learnable_with_aux", "params_total",
           "macs", "flops", "train_time_s", "train_img_s", "device")  # and the metrics of COLUMNS
EVAL_NAME = re.compile(r"eval-[A-Za-z0-9_-]+")  # protoseg/evaluate.py file_name()
# What each reference column (results/paper/*.yaml `column:`) holds, for the captions.
REFERENCE_SOURCES = {
    "paper": "the paper's Tables 1-2 (Zhou et al., CVPR 2022), read second hand from screenshots of the tables "
             "(results/paper/protoseg_cvpr22.yaml)",
    "code": "the official ProtoSeg code release's README (results/paper/protoseg_official_code.yaml)",
    "mmseg": "the MMSegmentation model zoo (results/paper/mmseg_model_zoo.yaml)",
}


def _spec_columns(spec: dict) -> dict:
    """A stored spec as {dotted path: value} (selection.spec_fields), lists as tuples: hashable, for groupby."""
    return {path: tuple(v) if isinstance(v, list) else v for path, v in spec_fields(spec).items()}


def load_runs(sweep_dirs: list[Path], unfinished: bool = False) -> pd.DataFrame:
    """One row per finished run: sweep, run_id, summary metrics and every spec field (dotted).
    A metrics.json that does not read is left out with a warning naming it. `unfinished`: also a row
    (its spec fields, no metrics) per run folder without metrics.json, so a table can count it."""
    rows = []
    for sweep_dir in sweep_dirs:
        for entry in os.scandir(sweep_dir):
            path = os.path.join(entry.path, "metrics.json")
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if not os.path.exists(path):
                spec = os.path.join(entry.path, "spec.yaml")
                if unfinished and os.path.exists(spec):
                    rows.append(spec_row(Path(sweep_dir).name, entry.name, load_yaml(Path(spec).read_text()) or {}))
                continue
            metrics, why = inspect_json(Path(path))
            if metrics is None:
                print(f"warning: {path} is corrupt ({why}); left out of the table. "
                      f"`harness run` evaluates the run again", file=sys.stderr)
                continue
            row = {"sweep": Path(sweep_dir).name, "run_id": entry.name,
                   **{k: metrics.get(k) for k in (*SUMMARY, *COLUMNS)}, **_spec_columns(metrics.get("spec", {})),
                   **_eval_scores(entry.path)}
            rows.append(row)
    return pd.DataFrame(rows)


def spec_row(sweep: str, run_id: str, spec: dict) -> dict:
    """A row of load_runs for a run that has no metrics: its spec fields only."""
    return {"sweep": sweep, "run_id": run_id, **_spec_columns(spec)}


def _eval_scores(run_dir: str) -> dict:
    """{'eval-test-whole': mIoU, ...} of a run's `harness evaluate` files; one that does not read is named."""
    scores = {}
    for entry in os.scandir(run_dir):
        name = entry.name.removesuffix(".json")
        if name == entry.name or not EVAL_NAME.fullmatch(name):
            continue
        metrics, why = inspect_json(Path(entry.path))
        if metrics is None:
            print(f"warning: {entry.path} is corrupt ({why}); left out of the table. "
                  f"`harness evaluate` writes it again", file=sys.stderr)
            continue
        scores[name] = metrics["mIoU"]
    return scores


def extra_columns(frame: pd.DataFrame) -> list[str]:
    """The diagnostics and evaluation-file columns that hold a value in some row, in table order."""
    evals = sorted(c for c in frame.columns if EVAL_NAME.fullmatch(c))
    return [c for c in [*COLUMNS, *evals] if c in frame.columns and frame[c].notna().any()]


def _value_text(value) -> str:
    """A spec value as text; None (NaN in a column of numbers) is null."""
    return "null" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _settings_text(frame: pd.DataFrame, columns: list[str], short: bool) -> pd.Series:
    """'name=value, ...' per row for the given columns (short: the last part of the dotted name)."""
    parts = [(c.split(".")[-1] if short else c) + "=" + frame[c].map(_value_text) for c in columns]
    text = parts[0]
    for part in parts[1:]:
        text = text + ", " + part
    return text


def method_labels(frame: pd.DataFrame) -> pd.Series:
    """'parametric' or 'ProtoSeg M=..', plus any other spec field that varies in the frame."""
    # a field that only changes with the backbone or dataset (its weights, its normalisation) names no method
    within = frame.groupby(["model.backbone", "data.dataset"], dropna=False)
    varying = [c for c in frame.columns if "." in c and c not in PLACED
               and (within[c].nunique(dropna=False) > 1).any()]
    proto = frame["model.head"] != "parametric"
    labels = pd.Series("parametric", index=frame.index)
    labels[proto] = "ProtoSeg M=" + frame.loc[proto, "model.prototype.num_prototypes"].astype(str)
    model = [c for c in varying if c.startswith("model.")]
    if model and proto.any():
        labels[proto] = labels[proto] + " (" + _settings_text(frame[proto], model, short=True) + ")"
    # parametric runs of one backbone that differ in their architecture (model.decoder_kernel) stay apart
    parametric = frame[~proto]
    within_parametric = parametric.groupby(["model.backbone", "data.dataset"], dropna=False)
    arch = [c for c in model if not c.startswith(config.PROTOTYPE_SECTION + ".")
            and (within_parametric[c].nunique(dropna=False) > 1).any()]
    if arch:
        labels[~proto] = labels[~proto] + " (" + _settings_text(parametric, arch, short=True) + ")"
    others = [c for c in varying if not c.startswith("model.")]
    if others:
        labels = labels + " [" + _settings_text(frame, others, short=False) + "]"
    return labels


def load_references(folder: Path = REFERENCES) -> dict[str, list[dict]]:
    """{column name: entries} of every results/paper/*.yaml (its `column:` names the report's column)."""
    references: dict[str, list[dict]] = {}
    for path in sorted(Path(folder).glob("*.yaml")) if Path(folder).is_dir() else []:
        doc = load_yaml(path.read_text()) or {}
        references.setdefault(doc.get("column", path.stem), []).extend(doc.get("entries", []))
    return references


def is_smoke(frame: pd.DataFrame) -> bool:
    """Some run comes from a `--smoke` sweep: its numbers measure nothing and never sit beside a reference."""
    return bool(frame.get("sweep", pd.Series(dtype=str)).astype(str).str.endswith(SMOKE_SUFFIX).any())


def smoke_text(frame: pd.DataFrame) -> str:
    sweeps = ", ".join(s for s in dict.fromkeys(frame["sweep"]) if s.endswith(SMOKE_SUFFIX))
    return (f"SMOKE: sweep {sweeps} (harness run --smoke: generated data, tiny crops, a few iterations): the "
            f"numbers only show that every cell runs, they measure nothing; no reference number is shown.")


def reference_entry(entries: list[dict], row) -> dict | None:
    """The first entry of the row's dataset, backbone and head (and its decoder and M where the entry gives
    them); None where there is none."""
    for entry in entries:
        if (entry.get("dataset"), entry.get("backbone"), entry.get("head")) != (
                row["data.dataset"], row["model.backbone"], row["head"]):
            continue
        if entry.get("decoder") not in (None, row["model.decoder"]):
            continue
        if row["head"] == "nonparametric" and entry.get("num_prototypes") not in (None, row["prototypes"]):
            continue
        return entry
    return None


def _reference_value(entries: list[dict], row) -> float | None:
    entry = reference_entry(entries, row)
    return None if entry is None else entry.get("mIoU")


def sorted_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """Backbone, then the parametric head before ProtoSeg by prototypes per class, then seed."""
    order = frame["model.head"].map({"parametric": 0}).fillna(1)
    return frame.assign(_order=order).sort_values(
        ["model.backbone", "_order", "model.prototype.num_prototypes", "train.seed"]).drop(columns="_order")


def aggregate(frame: pd.DataFrame, references: dict[str, list[dict]] | None = None) -> pd.DataFrame:
    """Long table: one row per (backbone, decoder, method, dataset) with mean/std over seeds; no reference
    column for a smoke sweep."""
    frame = sorted_runs(frame)
    frame["method"] = method_labels(frame)
    keys = ["model.backbone", "model.decoder", "method", "data.dataset"]
    grouped = frame.groupby(keys, sort=False)
    if "mIoU" not in frame:  # only unfinished runs
        frame = frame.assign(**{c: np.nan for c in ("mIoU", "params_learnable", "params_learnable_with_aux", "macs",
                                                      "num_classes")})
    out = grouped.agg(mIoU_mean=("mIoU", "mean"), mIoU_std=("mIoU", "std"), seeds=("mIoU", "count"),
                      runs=("mIoU", "size"),
                      params_learnable=("params_learnable", "first"),
                      params_learnable_with_aux=("params_learnable_with_aux", "first"), macs=("macs", "first"),
                      num_classes=("num_classes", "first"), aux_head=("model.aux_head", "first"),
                      head=("model.head", "first"), prototypes=("model.prototype.num_prototypes", "first"),
                      **{c: (c, "mean") for c in extra_columns(frame)}).reset_index()
    out["mIoU_std"] = out["mIoU_std"].fillna(0.0)
    same = ["model.backbone", "model.decoder", "data.dataset"]  # the parametric row a method is compared with
    base = out[out["head"] == "parametric"].set_index(same)["mIoU_mean"]
    base = base[~base.index.duplicated(keep=False)]  # several parametric rows: which is the baseline is unsaid
    parametric = pd.Series([base.get(key, np.nan) for key in zip(*(out[c] for c in same))], index=out.index)
    out["gain"] = (out["mIoU_mean"] - parametric).where(out["head"] != "parametric")
    references = {} if is_smoke(frame) else load_references() if references is None else references
    for column, entries in references.items():
        out[REFERENCE + column] = [_reference_value(entries, row) for _, row in out.iterrows()]
    return out


def reference_columns(agg: pd.DataFrame, dataset: str) -> list[str]:
    """The reference columns (results/paper/) that hold a number for some row of `dataset`."""
    rows = agg[agg["data.dataset"] == dataset]
    return [c for c in agg.columns if c.startswith(REFERENCE) and rows[c].notna().any()]


def _number(value, digits=1, signed=False, scale=1.0) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    value = value * scale
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _count_text(rows: pd.DataFrame) -> str:
    """How many runs a row's numbers are over: '3', or '1 of 3' while 2 of its runs are not finished."""
    if rows.empty:
        return ""
    done, runs = int(rows.iloc[0]["seeds"]), int(rows.iloc[0]["runs"])
    return str(done) if done == runs else f"{done} of {runs}"


def paper_table(agg: pd.DataFrame, latex: bool = False) -> pd.DataFrame:
    """The wide, display-ready table (strings); in LaTeX the best mIoU per column is bold."""
    datasets = list(dict.fromkeys(agg["data.dataset"]))
    decoders = agg["model.decoder"].nunique() > 1
    pm = " $\\pm$ " if latex else " ± "
    extra = {c: (COLUMNS[c].header, COLUMNS[c].digits) if c in COLUMNS else (f"{c} mIoU", 1)
             for c in extra_columns(agg)}
    rows, means = [], {d: [] for d in datasets}
    per_dataset = len(datasets) > 1
    references_of = {dataset: reference_columns(agg, dataset) for dataset in datasets}
    for (backbone, decoder, method), group in agg.groupby(["model.backbone", "model.decoder", "method"], sort=False):
        first = group.iloc[0]
        row = {"Backbone": backbone + (f" + {decoder}" if decoders else ""), "Method": method}
        if not per_dataset:
            row.update({"n": _count_text(group), "#Params (M)": _number(first["params_learnable"], 2, scale=1e-6),
                        "GMACs": _number(first["macs"], 1, scale=1e-9)})
        for dataset in datasets:
            cell = group[group["data.dataset"] == dataset]
            references = references_of[dataset]
            if per_dataset:  # K and the input size differ: so do the counts
                row[f"{dataset} n"] = _count_text(cell)
                row[f"{dataset} #Params (M)"] = "" if cell.empty else _number(cell.iloc[0]["params_learnable"], 2, scale=1e-6)
                row[f"{dataset} GMACs"] = "" if cell.empty else _number(cell.iloc[0]["macs"], 1, scale=1e-9)
            if cell.empty or not cell.iloc[0]["seeds"]:
                row.update({f"{dataset} mIoU": "", f"{dataset} gain": ""})
                row.update({f"{dataset} {c.removeprefix(REFERENCE)}": "" for c in references})
                row.update({f"{dataset} {name}": "" for name, _ in extra.values()})
                means[dataset].append(np.nan)
                continue
            c = cell.iloc[0]
            spread = f"{pm}{c['mIoU_std']:.1f}" if c["seeds"] > 1 else ""
            row[f"{dataset} mIoU"] = f"{c['mIoU_mean']:.1f}{spread}"
            row[f"{dataset} gain"] = _number(c["gain"], 1, signed=True)
            for column in references:
                value = c[column]
                row[f"{dataset} {column.removeprefix(REFERENCE)}"] = UNKNOWN if pd.isna(value) else f"{value:.1f}"
            row.update({f"{dataset} {name}": _number(c[column], digits) for column, (name, digits) in extra.items()})
            means[dataset].append(c["mIoU_mean"])
        rows.append(row)
    table = pd.DataFrame(rows)
    if latex:
        for dataset, values in means.items():
            best = np.nanmax(values)
            column = f"{dataset} mIoU"
            table[column] = [f"\\textbf{{{text}}}" if v == best else text for text, v in zip(table[column], values)]
        for column in ("Backbone", "Method"):
            table[column] = table[column].map(latex_text)
    return table


def render(agg: pd.DataFrame, fmt: str, caption: str = "") -> str:
    if fmt == "csv":
        return agg.to_csv(index=False)
    if fmt == "latex":
        table = paper_table(agg, latex=True)
        table.columns = [latex_text(c) for c in table.columns]
        return table.to_latex(index=False, escape=False, caption=latex_text(caption) or None)
    from tabulate import tabulate

    table = paper_table(agg)
    text = tabulate(table, headers="keys", tablefmt="pipe", showindex=False, disable_numparse=True)
    return text + (f"\n\n{caption}" if caption else "")


LATEX_ESCAPES = {"\\": r"\textbackslash{}", "%": r"\%", "#": r"\#", "_": r"\_", "&": r"\&", "$": r"\$",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$",
                 "\"": "''"}
LATEX_SPECIAL = re.compile("|".join(map(re.escape, LATEX_ESCAPES)))


def latex_text(text: str) -> str:
    """Plain text as LaTeX source, in one pass (an escape's own braces are not escaped again)."""
    return LATEX_SPECIAL.sub(lambda match: LATEX_ESCAPES[match.group()], text)


def protocol_text(row) -> str:
    """How a run was scored: 'whole image, resized into 2048x512' or 'slide 1024x1024 stride 768', ..."""
    mode = "whole image" if row["eval.mode"] == "whole" else \
        f"slide {'x'.join(map(str, row['eval.crop_size']))} stride {'x'.join(map(str, row['eval.stride']))}"
    parts = [mode]
    if row.get("eval.resize"):
        parts.append(f"resized into {'x'.join(map(str, row['eval.resize']))}")
    if tuple(row["eval.scales"]) != (1.0,):
        parts.append(f"scales {', '.join(map(str, row['eval.scales']))}")
    if row["eval.flip"]:
        parts.append("flip")
    return ", ".join(parts)


def protocols(frame: pd.DataFrame) -> str:
    """'ade20k: whole image, resized into 2048x512; cityscapes: slide ... (hrnet_w48: whole image)'."""
    texts = []
    for dataset, group in frame.groupby("data.dataset", sort=False):
        by_protocol = group.assign(_p=[protocol_text(r) for _, r in group.iterrows()]).groupby("_p", sort=False)
        common = max(by_protocol.groups, key=lambda p: len(by_protocol.groups[p]))
        others = [f"{', '.join(dict.fromkeys(g['model.backbone']))}: {p}" for p, g in by_protocol if p != common]
        texts.append(f"{dataset}: {common}" + (f" ({'; '.join(others)})" if others else ""))
    return "; ".join(texts)


def caption(frame: pd.DataFrame, agg: pd.DataFrame | None = None) -> str:
    sizes = sorted({f"{dataset} " * (frame["data.dataset"].nunique() > 1) + "x".join(map(str, size))
                    for dataset, size in zip(frame["data.dataset"], frame["eval.complexity_size"])})
    iters = sorted(set(frame.get("train.iterations", pd.Series(dtype=int)).dropna()))
    parts = [smoke_text(frame)] if is_smoke(frame) else []
    parts.append(f"mIoU (%) on the val split, mean ± std over seeds where there are several; n = finished runs "
                 f"(seeds) in the row ('1 of 3': the mean is over the finished one only); "
                 f"gain = ProtoSeg minus the parametric head on the same backbone; "
                 f"GMACs = multiply-accumulates (the papers' \"GFLOPs\") at input {', '.join(sizes)}; "
                 f"#Params = learnable parameters.")
    shown = sorted({c.removeprefix(REFERENCE) for d in set(frame["data.dataset"]) for c in
                    (reference_columns(agg, d) if agg is not None else [])})
    if shown:
        sources = "; ".join(f"{c} = {REFERENCE_SOURCES.get(c, f'results/paper/ column {c}')}" for c in shown)
        parts.append(f"Reference columns: {sources}; {UNKNOWN} where it has none for that row.")
    if iters:
        parts.append(f"Iterations: {', '.join(map(str, iters))}.")
    parts.append(f"Protocol: {protocols(frame)}.")
    extra = extra_columns(frame)
    devices = sorted(set(frame.get("device", pd.Series(dtype=str)).dropna()))
    for legend in dict.fromkeys(COLUMNS[c].legend for c in extra if c in COLUMNS):
        parts.append(legend.format(devices=" on " + ", ".join(devices) if devices else "") + ".")
    if any(c not in COLUMNS for c in extra):
        parts.append("eval-... mIoU = the final weights scored by harness evaluate (the name gives the split, "
                     "the inference protocol and, for another data root, a hash of it).")
    return " ".join(parts)
