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


PANEL = ["model.backbone", "model.decoder", "data.dataset"]  # a panel of its own; the rest is the method
SEED = "train.seed"
BAND = "mean over seeds; band: min-max over seeds"  # what the curves' lines and shading are


def _panels(frame: pd.DataFrame):
    """(title, rows) per backbone, decoder and dataset, in the frame's order (the decoder named only where
    the frame has several)."""
    keys = [k for k in PANEL if k in frame.columns]
    decoders = "model.decoder" in keys and frame["model.decoder"].nunique(dropna=False) > 1
    for values, group in frame.groupby(keys, sort=False, dropna=False):
        named = dict(zip(keys, values))
        backbone = str(named.get("model.backbone"))
        if decoders:
            backbone += f" + {named['model.decoder']}"
        yield f"{backbone}, {named.get('data.dataset')}", group


def method_order(frame: pd.DataFrame) -> list[str]:
    """The frame's methods: the parametric head(s) first, then ProtoSeg by prototypes per class, then by
    name; independent of the rows' order, so a method's place (and colour) depends only on which methods
    the report holds."""
    head = frame["model.head"] if "model.head" in frame else pd.Series("", index=frame.index)
    protos = frame.get("model.prototype.num_prototypes", pd.Series(0, index=frame.index))
    keys = {}
    for method, h, m in zip(frame["method"], head, protos):
        key = (h != "parametric", m if pd.notna(m) and h != "parametric" else 0, str(method))
        keys[method] = min(keys.get(method, key), key)
    return sorted(keys, key=keys.get)


def method_colours(frame: pd.DataFrame) -> dict[str, str]:
    """{method: colour} for every method of the frame, distinct colours (tab10, tab20 past 10 methods, an
    even sampling of a continuous map past 20). Built once per report and passed to every figure, so a
    method has one colour in all of them."""
    methods = method_order(frame)
    count = len(methods)
    if count <= 10:
        palette = plt.get_cmap("tab10").colors
    elif count <= 20:
        palette = plt.get_cmap("tab20").colors
    else:
        palette = plt.get_cmap("turbo")(np.linspace(0.05, 0.95, count))
    return {method: matplotlib.colors.to_hex(palette[i]) for i, method in enumerate(methods)}


def _by_method(group: pd.DataFrame, colours: dict):
    """(method, rows) of a panel, in the colour map's order."""
    order = {method: i for i, method in enumerate(colours)}
    parts = dict(list(group.groupby("method", sort=False)))
    for method in sorted(parts, key=lambda m: order.get(m, len(order))):
        yield method, parts[method]


def _seed_mean(ax, runs: list[tuple[list, list]], colour: str, label: str) -> bool:
    """The mean over runs (seeds) of y against x, with a min-max band; a point with its min-max as error
    bar where there is a single x; markers wherever there are few points, so a short curve shows."""
    values: dict = {}
    for xs, ys in runs:
        for x, y in zip(xs, ys):
            if y is not None and np.isfinite(y):
                values.setdefault(x, []).append(float(y))
    if not values:
        return False
    xs = sorted(values)
    mean = np.array([np.mean(values[x]) for x in xs])
    low = np.array([min(values[x]) for x in xs])
    high = np.array([max(values[x]) for x in xs])
    if len(xs) == 1:
        ax.errorbar(xs, mean, yerr=[mean - low, high - mean], fmt="o", ms=5, capsize=3, color=colour, label=label)
    else:
        ax.plot(xs, mean, lw=1.3, color=colour, label=label, marker="o" if len(xs) <= 5 else None, ms=4)
        if len(runs) > 1:
            ax.fill_between(xs, low, high, color=colour, alpha=0.18, lw=0)
    return True


def _draw_methods(ax, group: pd.DataFrame, results: Path, series, colours: dict) -> bool:
    """Per method of the panel, `series(metrics) -> (x, y)` as mean over its seeds with a band."""
    drawn = False
    for method, rows in _by_method(group, colours):
        runs = [series(_metrics(row, results)) for _, row in rows.iterrows()]
        drawn |= _seed_mean(ax, runs, colours[method], method)
    return drawn


def _figure_legend(fig, colours: dict, title: str | None = None) -> None:
    """One legend for the figure, right of the panels: every labelled artist once, in the colour map's order."""
    handles = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if not handles:
        return
    order = {method: i for i, method in enumerate(colours)}
    labels = sorted(handles, key=lambda label: order.get(label, len(order)))
    legend = fig.legend([handles[label] for label in labels],
                        [textwrap.fill(label, 70, break_long_words=False) for label in labels],
                        loc="outside right upper", fontsize=7, title=title, title_fontsize=7)
    box = legend.get_window_extent(fig.canvas.get_renderer())  # the figure grows by the legend: the panels keep
    width, height = fig.get_size_inches()                     # their size however long the method names are
    fig.set_size_inches(width + box.width / fig.dpi + 0.2, max(height, box.height / fig.dpi + 0.4))


def _history(key: str):
    return lambda m: ([h["iteration"] for h in m.get("history", [])], [h.get(key) for h in m.get("history", [])])


def _evals(key: str):
    return lambda m: ([e["iteration"] for e in m.get("evals", []) if e.get(key) is not None],
                      [e[key] for e in m.get("evals", []) if e.get(key) is not None])


def training_curves(frame: pd.DataFrame, results: Path, out: Path, colours: dict | None = None) -> Path:
    """Training loss (top) and validation mIoU at each evaluation (bottom) against iteration, one column
    per backbone and dataset; per method the mean over its seeds with a min-max band."""
    colours = colours or method_colours(frame)
    panels = list(_panels(frame))
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 6.4), squeeze=False, sharex="col",
                             layout="constrained")
    for column, (title, group) in enumerate(panels):
        loss, miou = axes[0][column], axes[1][column]
        _draw_methods(loss, group, results, _history("loss"), colours)
        _draw_methods(miou, group, results, _evals("mIoU"), colours)
        loss.set_title(title, fontsize=10)
        if loss.has_data():
            loss.set_yscale("log")
        miou.set_xlabel("iteration")
        for ax in (loss, miou):
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    axes[1][0].set_ylabel("validation mIoU (%)")
    _figure_legend(fig, colours, BAND)
    return _save(fig, out / "training_curves.png")


def _class_order(group: pd.DataFrame, results: Path) -> list[str]:
    """The dataset's class order (metrics.json `class_names`), then any class only per_class_iou names."""
    names: list[str] = []
    for _, row in group.iterrows():
        names += _metrics(row, results).get("class_names") or []
    for _, row in group.iterrows():
        names += list(_metrics(row, results).get("per_class_iou", {}))
    return list(dict.fromkeys(names))


def per_class_iou(frame: pd.DataFrame, results: Path, out: Path, colours: dict | None = None) -> Path:
    """IoU of each class in the dataset's class order, mean over seeds (bars) and std (whiskers), per
    method; a panel per backbone and dataset."""
    colours = colours or method_colours(frame)
    panels = list(_panels(frame))
    classes_of = [_class_order(group, results) for _, group in panels]
    most = max(len(c) for c in classes_of)
    upright = most > 30  # ADE20K's 150 names: read upwards, side by side
    width_in = max(11.0, (0.16 if upright else 0.3) * most + 4)  # wide enough for every class name
    fig, axes = plt.subplots(len(panels), 1, figsize=(width_in, 3.6 * len(panels)), squeeze=False,
                             layout="constrained")
    for ax, (title, group), classes in zip(axes[:, 0], panels, classes_of):
        methods = list(_by_method(group, colours))
        width = 0.8 / len(methods)
        for i, (method, rows) in enumerate(methods):
            table = pd.DataFrame([_metrics(row, results).get("per_class_iou", {}) for _, row in rows.iterrows()],
                                 columns=classes)
            ax.bar(np.arange(len(classes)) + (i - (len(methods) - 1) / 2) * width, table.mean(),
                   width, yerr=table.std().fillna(0), color=colours[method], label=method, error_kw={"lw": 0.6})
        ax.set_xticks(np.arange(len(classes)), classes, rotation=90 if upright else 30, ha="right",
                      rotation_mode="anchor", va="center" if upright else "top", fontsize=8)
        ax.set_ylabel("IoU (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    _figure_legend(fig, colours, "mean over seeds; whisker: std")
    return _save(fig, out / "per_class_iou.png")


def prototype_diagnostics(frame: pd.DataFrame, results: Path, out: Path, colours: dict | None = None) -> Path | None:
    """Within-class prototype diversity (mean pairwise cosine; 1 = collapsed) and prototypes used per class
    against iteration, for ProtoSeg runs with more than one prototype per class: a row per backbone and
    dataset, per method the mean over its seeds with a min-max band."""
    proto = frame[(frame["model.head"] == "nonparametric") & (frame["model.prototype.num_prototypes"] > 1)]
    if proto.empty:
        return None
    colours = colours or method_colours(frame)
    panels = list(_panels(proto))
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.4 * len(panels)), squeeze=False,
                             layout="constrained")
    for (diversity, used), (title, group) in zip(axes, panels):
        for ax, key in ((diversity, "prototype_diversity"), (used, "prototypes_used")):
            _draw_methods(ax, group, results, _evals(key), colours)
            ax.set_xlabel("iteration")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
        diversity.set_ylabel("mean pairwise cosine within a class")
        used.set_ylabel("prototypes winning a val pixel (of M)")
    _figure_legend(fig, colours, BAND)
    return _save(fig, out / "prototype_diagnostics.png")


X_AXIS = "model.prototype.num_prototypes"


def _value_text(value) -> str:
    return "null" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def prototype_series(group: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The ProtoSeg runs of one panel split into series against M: runs that differ in any setting but M
    (and the seed, which is averaged) are separate series. (label, rows) per series; the label names the
    settings that tell the panel's series apart."""
    proto = group[group["model.head"] == "nonparametric"]
    fixed = {X_AXIS, SEED, "model.head", *PANEL}
    settings = [c for c in proto.columns if "." in c and c not in fixed]
    text = proto[settings].map(_value_text) if settings else proto[[]]
    varying = [c for c in settings if text[c].nunique() > 1]
    if not varying:
        return [("ProtoSeg", proto)] if not proto.empty else []
    series = []
    for values, rows in proto.groupby([text[c] for c in varying], sort=False):
        values = values if isinstance(values, tuple) else (values,)
        names = [(c.split(".")[-1] if c.startswith("model.") else c) + "=" + v for c, v in zip(varying, values)]
        series.append((f"ProtoSeg ({', '.join(names)})", rows))
    return series


def miou_vs_prototypes(frame: pd.DataFrame, out: Path, colours: dict | None = None) -> Path | None:
    """mIoU (mean ± std over seeds) against M, a panel per backbone and dataset: a series per setting of
    everything but M and the seed (a grey line through a series' points, each point in its method's
    colour); the parametric head as a band (mean ± std)."""
    panels = [(title, group) for title, group in _panels(frame) if (group["model.head"] == "nonparametric").any()]
    if not panels:
        return None
    colours = colours or method_colours(frame)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), squeeze=False,
                             layout="constrained")
    styles = ["-", "--", ":", "-."]
    for ax, (title, group) in zip(axes[0], panels):
        series = prototype_series(group)
        ms = sorted(group.loc[group["model.head"] == "nonparametric", X_AXIS].unique())
        gap = float(np.diff(ms).min()) if len(ms) > 1 else 1.0
        at = {m: [i for i, (_, rows) in enumerate(series) if (rows[X_AXIS] == m).any()] for m in ms}
        step = 0.12 * gap / max(max(len(v) for v in at.values()) - 1, 1)  # series that share an M: side by side
        lines = 0
        for i, (label, rows) in enumerate(series):
            stats = rows.groupby(X_AXIS).agg(mean=("mIoU", "mean"), std=("mIoU", "std"), method=("method", "first"))
            xs = [m + (at[m].index(i) - (len(at[m]) - 1) / 2) * step for m in stats.index]
            if len(stats) > 1:
                ax.plot(xs, stats["mean"], color="0.45", lw=1, ls=styles[lines % len(styles)], zorder=1,
                        label=label if len(series) > 1 else None)
                lines += 1
            for x, (_, point) in zip(xs, stats.iterrows()):
                ax.errorbar([x], [point["mean"]], yerr=[0 if pd.isna(point["std"]) else point["std"]], fmt="o",
                            capsize=3, color=colours[point["method"]], label=point["method"], zorder=2)
        for method, rows in _by_method(group[group["model.head"] == "parametric"], colours):
            mean, std = rows["mIoU"].mean(), rows["mIoU"].std() if len(rows) > 1 else 0.0
            ax.axhspan(mean - std, mean + std, color=colours[method], alpha=0.15, lw=0)
            ax.axhline(mean, ls="--", color=colours[method], label=method)
        ax.set_xticks(ms)
        ax.set_xlabel("prototypes per class (M)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("val mIoU (%)")
    _figure_legend(fig, colours, "mean ± std over seeds\n(parametric: line and band)")
    return _save(fig, out / "miou_vs_prototypes.png")


def _colour(label: np.ndarray, classes: int) -> np.ndarray:
    palette = (plt.get_cmap("tab20")(np.arange(max(classes, 1)) % 20)[:, :3] * 255).astype(np.uint8)
    rgb = np.zeros((*label.shape, 3), np.uint8)
    valid = label < classes
    rgb[valid] = palette[label[valid]]
    return rgb


def distinct_images(images: np.ndarray, count: int) -> list[int]:
    """Indices of `count` of the stored images that differ most from one another (greedy farthest point on
    a thumbnail, from the first), in their stored order: neighbouring frames of a video look alike, and a
    figure of three near-identical scenes shows one scene."""
    total = len(images)
    count = min(count, total)
    if count <= 0:
        return []
    step = max(1, max(images.shape[1:3]) // 64)
    thumbs = images[:, ::step, ::step].reshape(total, -1).astype(np.float32)
    chosen = [0]
    distance = np.abs(thumbs - thumbs[0]).mean(axis=1)
    while len(chosen) < count:
        distance[chosen] = -1.0  # never twice
        best = int(np.argmax(distance))
        chosen.append(best)
        distance = np.minimum(distance, np.abs(thumbs - thumbs[best]).mean(axis=1))
    return sorted(chosen)


def predictions(frame: pd.DataFrame, results: Path, out: Path, images: int = 3,
                colours: dict | None = None) -> Path | None:
    """Validation images: image | ground truth | each backbone's methods' predictions (lowest seed each),
    for the stored images that differ most (distinct scenes)."""
    pick = frame.sort_values(SEED, kind="stable").drop_duplicates(["model.backbone", "data.dataset", "method"])
    pick = pick[pick["data.dataset"] == pick["data.dataset"].iloc[0]]
    order = {method: i for i, method in enumerate(colours or method_order(frame))}
    pick = pick.assign(_order=pick["method"].map(order)).sort_values(["model.backbone", "_order"], kind="stable")
    several = pick["model.backbone"].nunique() > 1
    loaded = []
    for _, row in pick.iterrows():
        path = _run_dir(row, results) / "predictions.npz"
        if path.exists():
            with np.load(path) as data:
                loaded.append((f"{row['model.backbone']}\n{row['method']}" if several else row["method"],
                               {key: data[key] for key in data.files}))
    if not loaded:
        return None
    first = _metrics(pick.iloc[0], results)
    classes = int(first.get("num_classes") or 256)
    stored = min(len(data["preds"]) for _, data in loaded)
    rows = distinct_images(loaded[0][1]["images"][:stored], images)
    cols = 2 + len(loaded)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.4 * cols, 2.1 * len(rows) + 0.8), squeeze=False,
                             layout="constrained")
    for r, i in enumerate(rows):
        panels = [("image", loaded[0][1]["images"][i]), ("ground truth", _colour(loaded[0][1]["labels"][i], classes))]
        panels += [(method, _colour(data["preds"][i], classes)) for method, data in loaded]
        for ax, (title, picture) in zip(axes[r], panels):
            ax.imshow(picture)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(textwrap.fill(title, 24, break_long_words=False), fontsize=8)
    names = first.get("class_names") or []
    if names and len(names) <= 40:
        palette = _colour(np.arange(len(names))[None], classes)[0] / 255
        handles = [matplotlib.patches.Patch(color=c, label=n) for c, n in zip(palette, names)]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(names), 11), fontsize=7,
                   frameon=False)
    return _save(fig, out / "predictions.png")


def _board_scalars(folder: Path) -> dict[str, tuple[list, list]]:
    """{tag: (steps, values)} of a run's TensorBoard event files, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: ([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
            for tag in events.Tags()["scalars"]}


def tensorboard_scalars(frame: pd.DataFrame, results: Path, out: Path, colours: dict | None = None) -> Path | None:
    """What TensorBoard's scalar dashboard shows for these runs, from their event files (for a report
    read without a TensorBoard server): a panel per tag, a line per run named as TensorBoard names it, in
    its method's colour (the seeds of a method told apart by line style) where the frame names methods."""
    from .worker import board_dir

    runs, methods = {}, {}
    for _, row in frame.iterrows():
        folder = board_dir(Store(results, row["sweep"]), row["run_id"])
        if folder.is_dir():
            runs[folder.name] = _board_scalars(folder)
            methods[folder.name] = row.get("method")
    tags = sorted({tag for scalars in runs.values() for tag in scalars})
    if not tags:
        return None
    columns = min(4, len(tags))
    rows = -(-len(tags) // columns)
    if "method" in frame.columns:
        colours = colours or method_colours(frame)
        colour = {name: colours.get(methods[name], "0.3") for name in runs}
    else:
        cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        colour = {name: cycle[i % len(cycle)] for i, name in enumerate(runs)}  # a run's colour in every panel
    styles, seen = ["-", "--", ":", "-."], {}
    style = {}
    for name in runs:  # the n-th run of a method: the n-th style
        style[name] = styles[seen.get(colour[name], 0) % len(styles)]
        seen[colour[name]] = seen.get(colour[name], 0) + 1
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False, layout="constrained")
    for ax, tag in zip(axes.flat, tags):
        for name, scalars in runs.items():
            if tag in scalars:
                steps, values = scalars[tag]
                ax.plot(steps, values, lw=1, label=name, color=colour[name], ls=style[name],
                        marker="o" if len(steps) <= 5 else None, ms=3)
        ax.set_title(tag, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    spare = list(axes.flat)[len(tags):]
    for ax in spare:
        ax.axis("off")
    lines = {line.get_label(): line for ax in axes.flat for line in ax.lines}  # one per run
    if spare:
        spare[0].legend(lines.values(), lines.keys(), fontsize=7, loc="center")
    else:
        fig.legend(lines.values(), lines.keys(), fontsize=7, loc="outside lower center", ncol=min(len(lines), 2))
    return _save(fig, out / "tensorboard_scalars.png")


def all_figures(frame: pd.DataFrame, results: Path, out: Path) -> list[Path]:
    """Every figure of the report; one colour map (method -> colour) built here serves them all."""
    _read.cache_clear()  # the runs may have changed since an earlier call in this process
    out.mkdir(parents=True, exist_ok=True)
    colours = method_colours(frame)
    made = [training_curves(frame, results, out, colours), miou_vs_prototypes(frame, out, colours),
            per_class_iou(frame, results, out, colours), prototype_diagnostics(frame, results, out, colours),
            predictions(frame, results, out, colours=colours), tensorboard_scalars(frame, results, out, colours)]
    return [p for p in made if p is not None]
