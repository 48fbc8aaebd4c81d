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
    _finished(sweep, "a", "parametric", 0, peak_rss_mib=10.0)
    _finished(sweep, "b", "parametric", 1, peak_rss_mib=14.0)
    _finished(sweep, "c", "nonparametric", 0)
    frame = report.load_runs([sweep])
    agg = report.aggregate(frame, references={})
    assert not any("RSS" in c for c in report.paper_table(agg).columns)

    monkeypatch.setitem(report.COLUMNS, "peak_rss_mib", report.Column("RSS", 2, "RSS = peak resident memory, MiB"))
    frame = report.load_runs([sweep])
    agg = report.aggregate(frame, references={})
    table = report.paper_table(agg)
    assert list(table["synthetic RSS"]) == ["12.00", ""]  # the mean over seeds; none for the other method
    assert "RSS = peak resident memory, MiB." in report.caption(frame, agg)
