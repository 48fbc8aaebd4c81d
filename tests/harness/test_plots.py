"""The report's figures (harness/plots.py), drawn from small sweeps of fake run folders whose metrics.json and
predictions.npz are written here, read as `harness report --plots` reads them."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from harness import plots, report

CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "SignSymbol"]  # dataset order, not alphabetical
LITE0, R18 = "tf_efficientnet_lite0", "resnet18"
GUMBEL10 = "ProtoSeg M=10 (update_assignment=gumbel)"
ARGMAX10 = "ProtoSeg M=10 (update_assignment=argmax)"
GUMBEL1 = "ProtoSeg M=1 (update_assignment=gumbel)"


def write_run(sweep: Path, run_id: str, *, backbone: str, head: str, m: int, seed: int, miou: float,
              assignment: str = "gumbel", gamma: float = 0.999, evals: list[tuple[int, float]] | None = None,
              per_class: dict | None = None, scenes: list[int] | None = None) -> None:
    """A finished run as the engine leaves it: metrics.json (per_class_iou keyed by name, written with sorted
    keys, class_names in dataset order) and, given scenes, a predictions.npz whose stored image i shows
    scene scenes[i] (image value 40 * scene, label and prediction = scene)."""
    folder = sweep / run_id
    folder.mkdir(parents=True)
    spec = {"model": {"backbone": backbone, "head": head,
                      "prototype": {"num_prototypes": m, "update_assignment": assignment, "gamma": gamma}},
            "data": {"dataset": "camvid"}, "train": {"seed": seed}}
    evals = evals if evals is not None else [(100, miou - 5), (200, miou)]
    proto = {"prototype_diversity": 0.1 + seed / 100, "prototypes_used": 5.0 + seed} if m > 1 else \
        {"prototype_diversity": None, "prototypes_used": 1.0}
    metrics = {"mIoU": miou, "num_classes": len(CLASSES), "class_names": CLASSES,
               "per_class_iou": per_class or {c: miou for c in CLASSES},
               "evals": [{"iteration": it, "mIoU": value, **(proto if head == "nonparametric" else {})}
                         for it, value in evals],
               "history": [{"iteration": 20, "loss": 2.0 + seed}, {"iteration": 40, "loss": 1.0 + seed}],
               "spec": spec}
    (folder / "metrics.json").write_text(json.dumps(metrics, sort_keys=True))
    if scenes is not None:
        scene = np.asarray(scenes, dtype=np.uint8)[:, None, None]
        np.savez(folder / "predictions.npz", images=np.broadcast_to(scene[..., None] * 40, (len(scenes), 8, 8, 3)),
                 labels=np.broadcast_to(scene, (len(scenes), 8, 8)), preds=np.broadcast_to(scene, (len(scenes), 8, 8)))


def frame_of(results: Path, sweep: str):
    """The frame `harness report --plots` hands to the figures (cmd_report)."""
    frame = report.sorted_runs(report.load_runs([results / sweep]))
    frame["method"] = report.method_labels(frame)
    return frame


@pytest.fixture
def drawn(monkeypatch) -> dict:
    """{file name: Figure} of every figure drawn, instead of its PNG."""
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(path.name, fig) and path)
    yield figures
    matplotlib.pyplot.close("all")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A CamVid-like study: Lite0 parametric / M=1 / M=10 gumbel / M=10 argmax, ResNet-18 parametric / M=10
    gumbel; two seeds each; two evaluations per run."""
    results = tmp_path_factory.mktemp("results")
    sweep = results / "study"
    cells = [(LITE0, "parametric", 10, "gumbel", 35.0), (LITE0, "nonparametric", 1, "gumbel", 30.0),
             (LITE0, "nonparametric", 10, "gumbel", 40.0), (LITE0, "nonparametric", 10, "argmax", 50.0),
             (R18, "parametric", 10, "gumbel", 25.0), (R18, "nonparametric", 10, "gumbel", 20.0)]
    for backbone, head, m, assignment, miou in cells:
        for seed in (0, 1):
            write_run(sweep, f"{backbone[:4]}-{head[:4]}-{m}-{assignment}-{seed}", backbone=backbone, head=head,
                      m=m, seed=seed, assignment=assignment, miou=miou + 2 * seed, scenes=[0, 1, 2, 3])
    return results


def _marked_points(ax) -> set[tuple[int, float]]:
    """(M, mean) of every marker (a point with its error bar) in the panel; points that share an M may sit
    side by side, so M is the nearest M tick."""
    ticks = np.asarray(ax.get_xticks())
    return {(int(ticks[np.abs(ticks - float(x)).argmin()]), round(float(y), 6)) for line in ax.lines
            if line.get_marker() == "o" for x, y in zip(line.get_xdata(), line.get_ydata())}


def test_mIoU_against_M_keeps_runs_that_differ_in_another_setting_apart_and_averages_the_seeds(tmp_path, drawn):
    """M = 10 gumbel and M = 10 argmax are two points, each the mean of its own seeds (not one point
    pooling both); a setting other than the update (gamma, as in experiments/ablations.yaml) also makes a
    series of its own."""
    cells = [("parametric", 10, "gumbel", 0.999, 35.0), ("nonparametric", 1, "gumbel", 0.999, 30.0),
             ("nonparametric", 10, "gumbel", 0.999, 40.0), ("nonparametric", 10, "argmax", 0.999, 50.0),
             ("nonparametric", 10, "gumbel", 0.9, 60.0)]
    for head, m, assignment, gamma, miou in cells:
        for seed in (0, 1):
            write_run(tmp_path / "s", f"{head}-{m}-{assignment}-{gamma}-{seed}", backbone=LITE0, head=head, m=m,
                      seed=seed, assignment=assignment, gamma=gamma, miou=miou + 2 * seed)
    plots.miou_vs_prototypes(frame_of(tmp_path, "s"), tmp_path / "figures")
    (ax,) = [ax for ax in drawn["miou_vs_prototypes.png"].axes if ax.has_data()]
    # seeds mIoU m and m + 2: each point is m + 1
    assert _marked_points(ax) == {(1, 31.0), (10, 41.0), (10, 51.0), (10, 61.0)}
    # the gumbel series joins M = 1 and M = 10 gumbel; argmax and gamma = 0.9 are points of their own series
    joined = [list(np.round(line.get_ydata(), 6)) for line in ax.lines if line.get_marker() in ("None", "", None)
              and len(line.get_xdata()) > 1 and line.get_linestyle() != "--"]
    assert joined == [[31.0, 41.0]]


def _handle_colour(handle) -> str:
    value = handle.get_color() if hasattr(handle, "get_color") else handle.get_facecolor()
    return matplotlib.colors.to_hex(matplotlib.colors.to_rgba_array(value)[0], keep_alpha=False)


def _legend_colours(figure, methods: list[str]) -> dict[str, str]:
    """{method: colour} of every legend entry of the figure that names a method (the entry's text is the
    method, or ends with it)."""
    legends = [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend())]
    found = {}
    for legend in legends:
        for text, handle in zip(legend.get_texts(), legend.legend_handles):
            named = [m for m in methods if text.get_text() == m or text.get_text().endswith(" " + m)]
            if named:
                found.setdefault(named[0], set()).add(_handle_colour(handle))
    return found


def test_a_method_has_one_colour_in_every_figure_and_methods_have_distinct_colours(study, drawn):
    frame = frame_of(study, "study")
    methods = sorted(set(frame["method"]))
    assert set(methods) == {"parametric", GUMBEL1, GUMBEL10, ARGMAX10}
    plots.all_figures(frame, study, study / "figures")
    colours: dict[str, set] = {}
    shown_in = {m: 0 for m in methods}
    for name, figure in drawn.items():
        for method, found in _legend_colours(figure, methods).items():
            colours.setdefault(method, set()).update(found)
            shown_in[method] += 1
    assert {method: len(found) for method, found in colours.items()} == {m: 1 for m in methods}, colours
    assert all(count >= 3 for count in shown_in.values()), shown_in  # curves, bars, mIoU against M at least
    assert len({found.pop() for found in colours.values()}) == len(methods)  # distinct methods, distinct colours
    # the ProtoSeg methods with M > 1 are in the diagnostics too, in the same colours
    assert set(_legend_colours(drawn["prototype_diagnostics.png"], methods)) == {GUMBEL10, ARGMAX10}


def test_per_class_iou_follows_the_datasets_class_order(tmp_path, drawn):
    iou = {c: 10.0 * i for i, c in enumerate(CLASSES)}
    write_run(tmp_path / "s", "r0", backbone=LITE0, head="parametric", m=1, seed=0, miou=20.0, per_class=iou)
    plots.per_class_iou(frame_of(tmp_path, "s"), tmp_path, tmp_path / "figures")
    (ax,) = drawn["per_class_iou.png"].axes
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    assert [bar.get_height() for bar in ax.patches] == [iou[c] for c in CLASSES]  # each bar its class's IoU


def test_a_single_evaluation_is_drawn_with_a_marker(tmp_path, drawn):
    """One evaluation per run (the quickstart's default): the mIoU and both diagnostics panels show it."""
    for m in (1, 5):
        for seed in (0, 1):
            write_run(tmp_path / "s", f"r{m}{seed}", backbone=LITE0, head="nonparametric", m=m, seed=seed,
                      miou=10.0 + seed, evals=[(300, 10.0 + seed)])
    frame = frame_of(tmp_path, "s")
    plots.training_curves(frame, tmp_path, tmp_path / "figures")
    plots.prototype_diagnostics(frame, tmp_path, tmp_path / "figures")
    panels = [ax for ax in drawn["training_curves.png"].axes if ax.get_ylabel() == "validation mIoU (%)"]
    panels += [ax for ax in drawn["prototype_diagnostics.png"].axes if ax.get_xlabel() == "iteration"]
    assert len(panels) == 3
    for ax in panels:
        single = [line for line in ax.lines if len(line.get_xdata()) == 1]
        assert single, f"nothing drawn in {ax.get_ylabel()!r}"
        assert all(line.get_marker() not in (None, "None", "", " ") for line in single), ax.get_ylabel()


def test_curves_are_the_mean_over_seeds_with_a_band(tmp_path, drawn):
    for seed, evals in ((0, [(100, 10.0), (200, 20.0)]), (1, [(100, 20.0), (200, 40.0)])):
        write_run(tmp_path / "s", f"r{seed}", backbone=LITE0, head="parametric", m=1, seed=seed, miou=evals[-1][1],
                  evals=evals)
    plots.training_curves(frame_of(tmp_path, "s"), tmp_path, tmp_path / "figures")
    (ax,) = [ax for ax in drawn["training_curves.png"].axes if ax.get_ylabel() == "validation mIoU (%)"]
    assert [list(line.get_ydata()) for line in ax.lines] == [[15.0, 30.0]]  # one line, the mean
    (band,) = ax.collections
    low, high = band.get_paths()[0].vertices[:, 1].min(), band.get_paths()[0].vertices[:, 1].max()
    assert (low, high) == (10.0, 40.0)  # min to max over the seeds
    legend = drawn["training_curves.png"].legends[0]
    assert "min-max" in legend.get_title().get_text()


def test_predictions_show_distinct_scenes(tmp_path, drawn):
    """Stored frames 0-3 are one scene (neighbouring video frames), 4 and 5 others: three distinct scenes
    are shown, each row's ground truth and predictions those of its image."""
    for head in ("parametric", "nonparametric"):
        write_run(tmp_path / "s", head, backbone=LITE0, head=head, m=10, seed=0, miou=20.0,
                  scenes=[0, 0, 0, 0, 1, 2])
    plots.predictions(frame_of(tmp_path, "s"), tmp_path, tmp_path / "figures", images=3)
    rows = np.asarray(drawn["predictions.png"].axes).reshape(-1, 4)
    assert len(rows) == 3
    scenes = [int(row[0].images[0].get_array()[0, 0, 0]) // 40 for row in rows]
    assert sorted(scenes) == [0, 1, 2]
    for row in rows:  # ground truth and both predictions of one image: one colour, distinct per scene
        assert len({tuple(ax.images[0].get_array()[0, 0]) for ax in row[1:]}) == 1
    assert len({tuple(row[1].images[0].get_array()[0, 0]) for row in rows}) == 3

    assert plots.distinct_images(np.zeros((2, 4, 4, 3), np.uint8), 3) == [0, 1]  # fewer stored: each once


def _texts(ax) -> list:
    """The title, axis labels and the tick labels that are drawn (ticks inside the view) of a panel."""
    if not ax.axison:  # set_axis_off: no axis is drawn
        return [ax.title] if ax.title.get_text() else []
    texts = [ax.title, ax.xaxis.label, ax.yaxis.label]
    for axis, (low, high) in ((ax.xaxis, sorted(ax.get_xlim())), (ax.yaxis, sorted(ax.get_ylim()))):
        for minor in (False, True):
            for tick, label in zip(axis.get_ticklocs(minor=minor), axis.get_ticklabels(minor=minor)):
                if low - 1e-9 * abs(high - low) <= tick <= high + 1e-9 * abs(high - low):
                    texts.append(label)
    return [t for t in texts if t.get_visible() and t.get_text()]


def test_no_title_or_label_runs_into_another_panel(study, drawn):
    """No text of a panel (title, axis labels, tick labels) overlaps another panel or its texts, in any figure."""
    plots.all_figures(frame_of(study, "study"), study, study / "figures")
    assert {"training_curves.png", "per_class_iou.png", "miou_vs_prototypes.png", "prototype_diagnostics.png",
            "predictions.png"} <= set(drawn)
    for name, figure in drawn.items():
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        axes = [ax for ax in figure.axes if ax.get_visible()]
        for a in axes:
            for b in axes:
                if a is b:
                    continue
                others = [b.get_window_extent(renderer)] + [t.get_window_extent(renderer) for t in _texts(b)]
                for text in _texts(a):
                    box = text.get_window_extent(renderer)
                    assert not any(box.overlaps(other) for other in others), \
                        f"{name}: {text.get_text()!r} runs into a neighbouring panel"
