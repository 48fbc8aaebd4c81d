"""`harness run FILE --smoke`: every cell of a real matrix, end to end on CPU, before a cluster spends GPU
hours on it. Each dataset that reads data.root is replaced by a small generated fixture in its real on-disk
layout and class count (protoseg/data/fixtures.py); crops, batches and iterations shrink; models keep their
real architecture; no pretrained weights are read. Parameters and MACs are still counted at the
experiment's eval.complexity_size (the papers' input sizes). The runs go to the sweep `<name>-smoke`, so
smoke results never mix with real ones."""
from __future__ import annotations

import shutil
from pathlib import Path

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


def name(sweep: str) -> str:
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
        if not (root / ".complete").exists():
            write_fixture(dataset, root, size=FIXTURE_SIZE)
            (root / ".complete").touch()
        roots.append(root)
    return roots


def drop_checkpoints(store, run_ids) -> int:
    """Delete the checkpoints of finished smoke runs (a 2-iteration Swin-B checkpoint is 1.4 GB; nothing
    resumes a finished run); the bytes freed."""
    freed = 0
    for rid in run_ids:
        folder = store.run_dir(rid) / "checkpoints"
        if folder.is_dir():
            freed += sum(f.stat().st_size for f in folder.iterdir())
            shutil.rmtree(folder)
    return freed
