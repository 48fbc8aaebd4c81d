"""Figures of a sweep: training curves, mIoU against prototypes per class, per-class IoU,
prototype diagnostics against iteration, predictions next to ground truth, TensorBoard's scalars."""
from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import matplotlib
import matplotlib.patches

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from protoseg.io import atomic_write_bytes  # noqa: E402

from .store import Store, read_json  # noqa: E402


def _save(fig, path: Path) -> Path:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _run_dir(row, results: Path) -> Path:
    return results / row["sweep"] / row["run_id"]


@functools.lru_cache(maxsize=None)
def _read(path: Path) -> dict:
    return read_json(path)


def _metrics(row, results: Path) -> dict:
    """A run's metrics.json, read once per all_figures call (several figures use each run)."""
    return _read(_run_dir(row, results) / "metrics.json")


def _groups(frame: pd.DataFrame):
    """(title, rows) per backbone and dataset, in the frame's order."""
    keys = ["model.backbone", "data.dataset"]
    for (backbone, dataset), group in frame.groupby(keys, sort=False):
        yield f"{backbone}, {dataset}", group


def _colours(frame: pd.DataFrame) -> dict:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {method: cycle[i % len(cycle)] for i, method in enumerate(dict.fromkeys(frame["method"]))}


def _lines(ax, frame: pd.DataFrame, results: Path, series, colours: dict) -> bool:
    """One line per run of `series(metrics) -> (x, y)`, coloured by method, labelled once per method."""
    drawn = set()
    for _, row in frame.iterrows():
        x, y = series(_metrics(row, results))
        if not x:
            continue
        method = row["method"]
        ax.plot(x, y, lw=1, alpha=0.8, color=colours[method], label=None if method in drawn else method)
        drawn.add(method)
    return bool(drawn)


def training_curves(frame: pd.DataFrame, results: Path, out: Path) -> Path:
    """Training loss (top) and validation mIoU at each evaluation (bottom) against iteration, one column
    per backbone and dataset, one line per run, coloured by method."""
    groups = list(_groups(frame))
    colours = _colours(frame)
    fig, axes = plt.subplots(2, len(groups), figsize=(5 * len(groups), 6.4), squeeze=False, sharex="col")
    for column, (title, group) in enumerate(groups):
        loss, miou = axes[0][column], axes[1][column]
        _lines(loss, group, results, lambda m: ([h["iteration"] for h in m.get("history", [])],
                                                [h["loss"] for h in m.get("history", [])]), colours)
        _lines(miou, group, results, lambda m: ([e["iteration"] for e in m.get("evals", [])],
                                                [e["mIoU"] for e in m.get("evals", [])]), colours)
        loss.set_title(title, fontsize=10)
        loss.set_yscale("log")
        miou.set_xlabel("iteration")
        for ax in (loss, miou):
            ax.grid(alpha=0.3)
        loss.legend(fontsize=7)
    axes[0][0].set_ylabel("training loss")
    axes[1][0].set_ylabel("validation mIoU (%)")
    return _save(fig, out / "training_curves.png")


def per_class_iou(frame: pd.DataFrame, results: Path, out: Path) -> Path:
    """IoU of each class, mean over seeds (bars) and std (whiskers), per method; a panel per backbone."""
    groups = list(_groups(frame))
    colours = _colours(frame)
    fig, axes = plt.subplots(len(groups), 1, figsize=(11, 3.4 * len(groups)), squeeze=False)
    for ax, (title, group) in zip(axes[:, 0], groups):
        table = pd.DataFrame([{**_metrics(row, results)["per_class_iou"], "method": row["method"]}
                              for _, row in group.iterrows()])
        stats = table.groupby("method", sort=False).agg(["mean", "std"])
        classes = list(dict.fromkeys(c for c, _ in stats.columns))
        width = 0.8 / len(stats)
        for i, (method, values) in enumerate(stats.iterrows()):
            ax.bar(np.arange(len(classes)) + (i - (len(stats) - 1) / 2) * width,
                   [values[(c, "mean")] for c in classes], width, yerr=[values[(c, "std")] for c in classes],
                   color=colours[method], label=method, error_kw={"lw": 0.6})
        ax.set_xticks(np.arange(len(classes)), classes, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("IoU (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(fig, out / "per_class_iou.png")


def prototype_diagnostics(frame: pd.DataFrame, results: Path, out: Path) -> Path | None:
    """Within-class prototype diversity (mean pairwise cosine; 1 = collapsed) and prototypes used per class
    against iteration, for ProtoSeg runs with more than one prototype per class."""
    proto = frame[(frame["model.head"] == "nonparametric") & (frame["model.num_prototypes"] > 1)]
    if proto.empty:
        return None
    proto = proto.assign(method=proto["model.backbone"] + ": " + proto["method"])
    colours = _colours(proto)
    fig, (diversity, used) = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, key in ((diversity, "prototype_diversity"), (used, "prototypes_used")):
        _lines(ax, proto, results, lambda m: ([e["iteration"] for e in m.get("evals", []) if key in e],
                                              [e[key] for e in m.get("evals", []) if key in e]), colours)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    diversity.set_ylabel("mean pairwise cosine within a class")
    used.set_ylabel("prototypes winning a val pixel (of M)")
    diversity.legend(fontsize=7)
    return _save(fig, out / "prototype_diagnostics.png")


def miou_vs_prototypes(frame: pd.DataFrame, out: Path) -> Path | None:
    """mIoU (mean ± std over seeds) against M; the parametric head as a band."""
    proto = frame[frame["model.head"] == "nonparametric"]
    if proto.empty:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for (backbone, dataset), group in frame.groupby(["model.backbone", "data.dataset"]):
        stats = group[group["model.head"] == "nonparametric"].groupby("model.num_prototypes")["mIoU"].agg(["mean", "std"])
        line = ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                           label=f"ProtoSeg, {backbone}, {dataset}")
        base = group[group["model.head"] == "parametric"]["mIoU"]
        if not base.empty:
            ax.axhspan(base.mean() - base.std(ddof=1 if len(base) > 1 else 0),
                       base.mean() + (base.std() if len(base) > 1 else 0), color=line[0].get_color(), alpha=0.15)
            ax.axhline(base.mean(), ls="--", color=line[0].get_color(), label=f"parametric, {backbone}, {dataset}")
    ax.set_xticks(sorted(proto["model.num_prototypes"].unique()))
    ax.set_xlabel("prototypes per class (M)")
    ax.set_ylabel("mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out / "miou_vs_prototypes.png")


def _colour(label: np.ndarray, classes: int) -> np.ndarray:
    palette = (plt.get_cmap("tab20")(np.arange(max(classes, 1)) % 20)[:, :3] * 255).astype(np.uint8)
    rgb = np.zeros((*label.shape, 3), np.uint8)
    valid = label < classes
    rgb[valid] = palette[label[valid]]
    return rgb


def predictions(frame: pd.DataFrame, results: Path, out: Path, images: int = 3) -> Path | None:
    """Validation images: image | ground truth | each backbone's methods' predictions (lowest seed each)."""
    pick = frame.sort_values("train.seed", kind="stable").drop_duplicates(["model.backbone", "data.dataset", "method"])
    pick = pick[pick["data.dataset"] == pick["data.dataset"].iloc[0]]
    several = pick["model.backbone"].nunique() > 1
    loaded = []
    for _, row in pick.iterrows():
        path = _run_dir(row, results) / "predictions.npz"
        if path.exists():
            loaded.append((f"{row['model.backbone']}\n{row['method']}" if several else row["method"], np.load(path)))
    if not loaded:
        return None
    first = _metrics(pick.iloc[0], results)
    classes = int(first.get("num_classes") or 256)
    count = min(images, len(loaded[0][1]["images"]))
    cols = 2 + len(loaded)
    fig, axes = plt.subplots(count, cols, figsize=(2.4 * cols, 2.1 * count + 0.6), squeeze=False)
    for i in range(count):
        panels = [("image", loaded[0][1]["images"][i]), ("ground truth", _colour(loaded[0][1]["labels"][i], classes))]
        panels += [(method, _colour(data["preds"][i], classes)) for method, data in loaded]
        for ax, (title, picture) in zip(axes[i], panels):
            ax.imshow(picture)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(textwrap.fill(title, 24, break_long_words=False), fontsize=8)
    names = first.get("class_names") or []
    if names and len(names) <= 40:
        colours = _colour(np.arange(len(names))[None], classes)[0] / 255
        handles = [matplotlib.patches.Patch(color=c, label=n) for c, n in zip(colours, names)]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(names), 11), fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, -0.02))
    return _save(fig, out / "predictions.png")


def _board_scalars(folder: Path) -> dict[str, tuple[list, list]]:
    """{tag: (steps, values)} of a run's TensorBoard event files, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: ([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
            for tag in events.Tags()["scalars"]}


def tensorboard_scalars(frame: pd.DataFrame, results: Path, out: Path) -> Path | None:
    """What TensorBoard's scalar dashboard shows for these runs, from their event files (for a report
    read without a TensorBoard server): a panel per tag, a line per run named as TensorBoard names it."""
    from .worker import board_dir

    runs = {}
    for _, row in frame.iterrows():
        folder = board_dir(Store(results, row["sweep"]), row["run_id"])
        if folder.is_dir():
            runs[folder.name] = _board_scalars(folder)
    tags = sorted({tag for scalars in runs.values() for tag in scalars})
    if not tags:
        return None
    columns = min(4, len(tags))
    rows = -(-len(tags) // columns)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {name: cycle[i % len(cycle)] for i, name in enumerate(runs)}  # a run's colour in every panel
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        for name, scalars in runs.items():
            if tag in scalars:
                steps, values = scalars[tag]
                ax.plot(steps, values, lw=1, label=name, color=colour[name],
                        marker="o" if len(steps) <= 5 else None, ms=3)
        ax.set_title(tag, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    spare = list(axes.flat)[len(tags):]
    for ax in spare:
        ax.axis("off")
    lines = {line.get_label(): line for ax in axes.flat for line in ax.lines}  # one per run
    (spare[0] if spare else axes.flat[0]).legend(lines.values(), lines.keys(), fontsize=7,
                                                 loc="center" if spare else "best")
    return _save(fig, out / "tensorboard_scalars.png")


def all_figures(frame: pd.DataFrame, results: Path, out: Path) -> list[Path]:
    _read.cache_clear()  # the runs may have changed since an earlier call in this process
    out.mkdir(parents=True, exist_ok=True)
    made = [training_curves(frame, results, out), miou_vs_prototypes(frame, out), per_class_iou(frame, results, out),
            prototype_diagnostics(frame, results, out), predictions(frame, results, out),
            tensorboard_scalars(frame, results, out)]
    return [p for p in made if p is not None]
