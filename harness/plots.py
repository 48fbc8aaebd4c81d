"""Figures of a sweep: training curves, mIoU against prototypes per class,
predictions next to ground truth."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from protoseg.io import atomic_write_bytes  # noqa: E402


def _save(fig, path: Path) -> Path:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _run_dir(row, results: Path) -> Path:
    return results / row["sweep"] / row["run_id"]


def training_curves(frame: pd.DataFrame, results: Path, out: Path) -> Path:
    """Loss against iteration, one panel per method, one line per run (seed)."""
    methods = list(dict.fromkeys(frame["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.2), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        for _, row in frame[frame["method"] == method].iterrows():
            history = json.loads((_run_dir(row, results) / "metrics.json").read_text()).get("history", [])
            if history:
                ax.plot([h["iteration"] for h in history], [h["loss"] for h in history], lw=1,
                        label=f"{row['model.backbone']} {row['data.dataset']} seed {row['train.seed']}")
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("training loss")
    return _save(fig, out / "training_curves.png")


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
    """Validation images: image | ground truth | each method's prediction (lowest seed, first backbone)."""
    first = frame.sort_values("train.seed").iloc[0]
    pick = frame[(frame["model.backbone"] == first["model.backbone"]) & (frame["data.dataset"] == first["data.dataset"])]
    pick = pick.sort_values("train.seed").drop_duplicates("method")
    loaded = []
    for _, row in pick.iterrows():
        path = _run_dir(row, results) / "predictions.npz"
        if path.exists():
            loaded.append((row["method"], np.load(path)))
    if not loaded:
        return None
    classes = int(frame["num_classes"].max()) if "num_classes" in frame else 256
    count = min(images, len(loaded[0][1]["images"]))
    cols = 2 + len(loaded)
    fig, axes = plt.subplots(count, cols, figsize=(2.4 * cols, 2.4 * count), squeeze=False)
    for i in range(count):
        panels = [("image", loaded[0][1]["images"][i]), ("ground truth", _colour(loaded[0][1]["labels"][i], classes))]
        panels += [(method, _colour(data["preds"][i], classes)) for method, data in loaded]
        for ax, (title, picture) in zip(axes[i], panels):
            ax.imshow(picture)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=9)
    return _save(fig, out / "predictions.png")


def all_figures(frame: pd.DataFrame, results: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = [training_curves(frame, results, out), miou_vs_prototypes(frame, out), predictions(frame, results, out)]
    return [p for p in made if p is not None]
