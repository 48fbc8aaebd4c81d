"""`harness run FILE --smoke`: every cell of a real matrix, end to end on CPU, before a cluster spends GPU
hours on it. Each dataset that reads data.root is replaced by a small generated fixture in its real on-disk
layout and class count (protoseg/data/fixtures.py); crops, batches and iterations shrink; models keep their
real architecture; no pretrained weights are read. Parameters and MACs are still counted at the
experiment's eval.complexity_size (the papers' input sizes). The runs go to the sweep `<name>-smoke`, so
smoke results never mix with real ones."""
from __future__ import annotations

from pathlib import Path

from protoseg.io import refuse_link
from protoseg.registry import NEEDS_ROOT

SUFFIX = "-smoke"
DATA_FOLDER = ".smoke-data"  # under --results, beside the sweeps
SETTINGS = {
    "model.pretrained": None,
    "data.crop_size": [64, 64],
    "data.batch_size": 2,
    "data.val_batch_size": 1,
    "data.num_workers": 0,
    "train.iterations": 2,
    "train.eval_interval": 0,
    "train.checkpoint_interval": 2,
    "train.log_interval": 1,
    "train.warmup_iters": 1,
    "eval.crop_size": [64, 64],
    "eval.stride": [48, 48],
    "eval.fps_images": 2,
    "eval.fps_warmup": 1,
}
FIXTURE_SIZE = (64, 96)  # [h, w] of a fixture's frames


def sweep_name(sweep: str) -> str:
    return sweep + SUFFIX


def data_root(results: Path, dataset: str) -> Path:
    return Path(results).resolve() / DATA_FOLDER / dataset


def settings(fields, results: Path) -> dict:
    """The smoke values of one cell whose resolved values are `fields` (dotted path -> value)."""
    out = dict(SETTINGS)
    if fields["data.dataset"] in NEEDS_ROOT:
        out["data.root"] = str(data_root(results, fields["data.dataset"]))
    if fields["eval.resize"]:  # the protocol still runs, into a box the size of a fixture's frames
        out["eval.resize"] = [max(FIXTURE_SIZE), min(FIXTURE_SIZE)]
    if fields["train.warmup_iters"] == 0:
        del out["train.warmup_iters"]
    return out


def write_data(results: Path, datasets) -> list[Path]:
    """The fixture of each dataset that reads data.root, written once (kept for later smoke runs)."""
    from protoseg.data.fixtures import write_fixture

    roots = []
    for dataset in sorted(set(datasets) & set(NEEDS_ROOT)):
        root = data_root(results, dataset)
        for folder in (root.parent, root):
            refuse_link(folder, "smoke data folder")
        if not (root / ".complete").exists():
            write_fixture(dataset, root, size=FIXTURE_SIZE)
            (root / ".complete").touch()
        roots.append(root)
    return roots


def drop_checkpoints(store, run_ids) -> int:
    """Delete the checkpoints of finished smoke runs (a 2-iteration Swin-B checkpoint is 1.4 GB; nothing
    resumes a finished run); the bytes freed."""
    from protoseg import checkpoint  # torch: not for every command that imports this module

    return sum(checkpoint.remove_all(store.run_dir(rid)) for rid in run_ids)


def sizes_against_paper(frame, entries: list[dict], tolerance: float = 0.01) -> str:
    """Per model of a finished smoke sweep (`frame`: harness.report.load_runs), its learnable parameters as
    trained (auxiliary head included) against the paper's #Param (`entries` of results/paper/, matched by
    backbone, decoder and head), at K = 150 where the sweep has it, as the paper counts; '' when no model of
    the sweep has a paper size. A parametric model more than `tolerance` off is marked."""
    import pandas as pd

    if frame.empty or "params_learnable_with_aux" not in frame:
        return ""
    keys = [k for k in ("model.backbone", "model.decoder", "model.head", "model.prototype.num_prototypes",
                        "model.decoder_kernel") if k in frame]
    frame = frame.assign(_not_k150=frame["num_classes"] != 150).sort_values("_not_k150", kind="stable")
    lines = []
    for values, group in frame.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, values))
        model = (row["model.backbone"], row["model.decoder"], row["model.head"])
        paper = next((e["params_M"] for e in entries
                      if "params_M" in e and (e.get("backbone"), e.get("decoder"), e.get("head")) == model), None)
        first = group.iloc[0]
        if paper is None or pd.isna(first["params_learnable_with_aux"]):
            continue
        ours = first["params_learnable_with_aux"] / 1e6
        kernel = row.get("model.decoder_kernel")
        label = f"{model[0]} + {model[1]}" + ("" if pd.isna(kernel) else f" (kernel {int(kernel)})")
        if model[2] == "parametric":
            method = "parametric"
            note = f"  <- more than {tolerance:.0%} off" if abs(ours / paper - 1) > tolerance else ""
        else:
            method = f"ProtoSeg M={row['model.prototype.num_prototypes']}"
            note = "  (the paper's Ours rows leave the projection head out)"
        lines.append(f"  {label:<28} {method:<14} K={int(first['num_classes']):<4} {ours:7.2f}  "
                     f"paper {paper:5.1f}  {ours / paper - 1:+6.1%}{note}")
    if not lines:
        return ""
    return "\n".join(["#Param (M), learnable, auxiliary head included, against the paper's "
                      "(results/paper/protoseg_cvpr22.yaml; the paper counts at K = 150):", *lines])
