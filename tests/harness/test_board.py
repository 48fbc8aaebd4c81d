"""TensorBoard event files of every run, read back with tensorboard's own reader."""
from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from conftest import run_harness, tiny_experiment


def _scalars(logdir) -> dict:
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    return {run: {tag: [(e.step, e.value) for e in multiplexer.Scalars(run, tag)]
                  for tag in multiplexer.GetAccumulator(run).Tags()["scalars"]}
            for run in multiplexer.Runs()}


@pytest.mark.slow
def test_each_run_of_a_sweep_writes_its_curves_named_by_its_settings(tmp_path, monkeypatch):
    path = tiny_experiment(tmp_path, "board", {"model.head": ["parametric", "nonparametric"]}, None, 4,
                           {"backend": "local", "jobs": 2}, eval_interval=2, log_interval=1)
    results = tmp_path / "results"
    proc = run_harness("run", path, results=results)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = _scalars(results / "board")
    assert sorted(name.split(" (")[0] for name in runs) == [".tensorboard/head=nonparametric",
                                                            ".tensorboard/head=parametric"]
    for name, tags in runs.items():
        assert [step for step, _ in tags["train/loss"]] == [1, 2, 3, 4]
        assert {"train/ce", "train/lr", "val/mIoU"} <= set(tags)
        assert [step for step, _ in tags["val/mIoU"]] == [2, 4]
        if "nonparametric" in name:
            assert {"train/ppc", "train/ppd", "val/prototype_diversity", "val/prototypes_used"} <= set(tags)
        else:
            assert "val/prototype_diversity" not in tags

    from harness import plots, report

    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.setdefault(path.name, fig) and path)
    plots.tensorboard_scalars(report.load_runs([results / "board"]), results, tmp_path / "figures")
    panels = {ax.get_title(): ax for ax in drawn["tensorboard_scalars.png"].axes if ax.get_title()}
    assert set(panels) == set().union(*(tags for tags in runs.values()))  # a panel per tag
    loss_lines = {line.get_label(): list(line.get_xdata()) for line in panels["train/loss"].lines}
    assert loss_lines == {name.split("/")[1]: [1, 2, 3, 4] for name in runs}  # a line per run, TensorBoard's name
    assert [line.get_label() for line in panels["val/prototypes_used"].lines] == \
        [name.split("/")[1] for name in runs if "nonparametric" in name]


def test_a_resumed_run_shows_each_step_once(tmp_path):
    from conftest import tiny_spec
    from protoseg import engine, phases

    spec = tiny_spec(train={"iterations": 6, "log_interval": 1, "checkpoint_interval": 2})
    calls = iter(range(100))
    with pytest.raises(phases.Interrupted):
        engine.run(spec, tmp_path / "run", stop=lambda: next(calls) >= 2)  # stops after step 3
    engine.run(spec, tmp_path / "run")
    (steps,) = [[s for s, _ in tags["train/loss"]] for tags in _scalars(tmp_path / "run" / "tensorboard").values()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_the_figure_finds_a_run_without_settings(tmp_path, monkeypatch):
    """A one-cell sweep's run has no settings: its event folder is named by its run id alone."""
    import pandas as pd

    from harness import plots
    from harness.store import Store
    from harness.worker import board_dir
    from protoseg.board import Board

    store = Store(tmp_path, "single")
    store.prepare("r1", {"model": {}}, {})
    board = Board(board_dir(store, "r1"))
    for step in (1, 2, 3):
        board.train(step, 1.0 / step, {}, 0.01, None)
    board.close()
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.setdefault(path.name, fig) and path)
    assert plots.tensorboard_scalars(pd.DataFrame([{"sweep": "single", "run_id": "r1"}]), tmp_path, tmp_path)
    panels = {ax.get_title(): ax for ax in drawn["tensorboard_scalars.png"].axes if ax.get_title()}
    assert set(panels) == {"train/loss", "train/lr"}
    assert [list(line.get_xdata()) for line in panels["train/loss"].lines] == [[1, 2, 3]]
