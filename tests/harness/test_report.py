"""The report's table from metrics.json files written here (no training)."""
from __future__ import annotations

import json

from conftest import tiny_spec
from harness import report


def _finished(folder, run_id, head, seed, **metrics):
    spec = tiny_spec(model={"head": head}, train={"seed": seed})
    (folder / run_id).mkdir(parents=True)
    values = {"mIoU": 50.0 + seed, "num_classes": 3, "params_learnable": 1e6, "macs": 2e9, **metrics}
    (folder / run_id / "metrics.json").write_text(json.dumps({**values, "spec": spec}))


def test_a_column_table_entry_is_a_column_with_its_legend(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    _finished(sweep, "a", "parametric", 0, train_img_s=10.0)
    _finished(sweep, "b", "parametric", 1, train_img_s=14.0)
    _finished(sweep, "c", "nonparametric", 0)
    frame = report.load_runs([sweep])
    agg = report.aggregate(frame, references={})
    assert not any("img/s" in c for c in report.paper_table(agg).columns)

    monkeypatch.setitem(report.COLUMNS, "train_img_s", report.Column("img/s", 2, "img/s = training images a second"))
    agg = report.aggregate(frame, references={})
    table = report.paper_table(agg)
    assert list(table["synthetic img/s"]) == ["12.00", ""]  # the mean over seeds; none for the other method
    assert "img/s = training images a second." in report.caption(frame, agg)
