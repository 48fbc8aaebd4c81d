"""Run identity across versions of the code: a finished sweep is never renamed or
retrained by an upgrade. tests/fixtures/ holds a results folder and the
quickstart's plan as written by spec version 1 (commit 33f749d)."""
from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import FIXTURES, ROOT, run_harness
from harness import identity, matrix, report
from harness.store import Store
from protoseg import config

V1_RESULTS = FIXTURES / "results_v1"
V1_SWEEP = FIXTURES / "v1sweep.yaml"
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"


def v1_quickstart_ids() -> list[str]:
    return re.findall(r"^  ([0-9a-f]{12}) ", (FIXTURES / "quickstart_v1_plan.txt").read_text(), re.M)


def ids(path: Path, **kw) -> list[str]:
    return [run.run_id for run in matrix.load(path, **kw).runs]


@pytest.fixture
def new_key(monkeypatch):
    """A field added by a later version, whose default reproduces the old behaviour."""
    defaults = copy.deepcopy(config.DEFAULTS)
    defaults["model"]["aux_head"] = False
    defaults["train"]["warmup_iters"] = 0
    monkeypatch.setattr(config, "DEFAULTS", defaults)


@pytest.fixture
def gamma_default_changed(monkeypatch):
    """A spec version after today's changes what model.prototype.gamma's default means (0.999 -> 0.99)."""
    gamma = "model.prototype.gamma"
    table = dict(config.FIELDS)
    table[gamma] = table[gamma]._replace(default=0.99)
    defaults = copy.deepcopy(config.DEFAULTS)
    defaults["model"]["prototype"]["gamma"] = 0.99
    version = config.SPEC_VERSION + 1
    history = [*config.HISTORY, {"version": version, "defaults": {gamma: 0.999}}]
    for module in (config, config.fields):
        monkeypatch.setattr(module, "FIELDS", table)
        monkeypatch.setattr(module, "DEFAULTS", defaults)
    for module in (config, config.history):
        monkeypatch.setattr(module, "HISTORY", history)
        monkeypatch.setattr(module, "SPEC_VERSION", version)


def test_version_1_ids_are_unchanged():
    assert ids(QUICKSTART) == v1_quickstart_ids()
    assert sorted(ids(V1_SWEEP)) == sorted(p.name for p in (V1_RESULTS / "v1sweep").iterdir() if p.is_dir())


def test_the_id_of_a_stored_spec_is_its_folder_name():
    for folder in (V1_RESULTS / "v1sweep").iterdir():
        if folder.is_dir():
            spec = yaml.safe_load((folder / "spec.yaml").read_text())
            assert identity.run_id(spec) == folder.name


def test_a_new_key_with_its_default_changes_no_id(new_key):
    assert ids(QUICKSTART) == v1_quickstart_ids()
    assert sorted(ids(V1_SWEEP)) == sorted(p.name for p in (V1_RESULTS / "v1sweep").iterdir() if p.is_dir())


def test_a_new_key_set_off_its_default_is_a_new_run(new_key):
    changed = ids(QUICKSTART, overrides=[("base.model.aux_head", True)])
    assert not set(changed) & set(v1_quickstart_ids()) and len(changed) == 6
    assert ids(QUICKSTART, overrides=[("base.model.aux_head", False)]) == v1_quickstart_ids()


def test_resource_fields_never_enter_the_id():
    for key, value in (("train.threads", 3), ("train.device", "cpu"), ("train.progress", False),
                       ("data.num_workers", 2), ("train.keep_checkpoints_when_done", False)):
        assert ids(QUICKSTART, overrides=[(f"base.{key}", value)]) == v1_quickstart_ids(), key


def test_a_changed_default_keeps_old_sweeps_and_makes_new_ids(gamma_default_changed, capsys):
    old_sweep = ids(QUICKSTART, spec_version=1)
    assert old_sweep == v1_quickstart_ids()  # planned at version 1: keeps gamma 0.999
    assert "'model.prototype.gamma' keeps its old default 0.999 (now 0.99)" in capsys.readouterr().err
    new_sweep = ids(QUICKSTART)
    parametric = [rid for rid, run in zip(new_sweep, matrix.load(QUICKSTART).runs)
                  if run.value("model.head") == "parametric"]
    assert set(new_sweep) - set(parametric) != set() and not (set(new_sweep) - set(parametric)) & set(old_sweep)
    assert set(parametric) <= set(old_sweep)  # gamma means nothing to a parametric head


def test_an_old_key_name_is_accepted_with_one_notice_and_keeps_the_id(tmp_path, capsys):
    """Spec version 2 moved the prototype keys from model.X to model.prototype.X."""
    config.history._told.clear()
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["base"]["model"]["gamma"] = 0.999  # old names, at their values
    doc["matrix"]["model.num_prototypes"] = doc["matrix"].pop("model.prototype.num_prototypes")
    doc["matrix"]["model.ppc_temperature"] = [1.0]
    path = tmp_path / "old_names.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert ids(path) == v1_quickstart_ids()
    err = capsys.readouterr().err
    assert "notice:" in err and "'model.gamma' is now 'model.prototype.gamma'" in err
    assert "every key now under model.prototype" in err
    assert err.count("notice:") == 1  # one line for the file: not one per key or per cell
    assert ids(QUICKSTART) == v1_quickstart_ids()


def test_report_of_old_runs_next_to_runs_with_a_new_key_is_one_method_each(new_key, tmp_path):
    """Old metrics.json lack the new key: filled with its baseline, not shown as another method."""
    results = tmp_path / "results"
    shutil.copytree(V1_RESULTS, results)
    newer = results / "v1sweep" / "aaaaaaaaaaaa"
    shutil.copytree(results / "v1sweep" / "4c210067d4ab", newer)
    metrics = yaml.safe_load((newer / "metrics.json").read_text())
    metrics["spec"]["model"]["aux_head"] = False
    metrics["spec"]["train"]["seed"] = 1
    (newer / "metrics.json").write_text(yaml.safe_dump(metrics))
    frame = report.load_runs([results / "v1sweep"])
    assert sorted(report.aggregate(frame)["method"]) == ["ProtoSeg M=1", "ProtoSeg M=2", "parametric"]


@pytest.mark.slow
def test_a_version_1_results_folder_resumes_with_nothing_retrained(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(V1_RESULTS, results)
    before = {p: p.read_bytes() for p in results.rglob("metrics.json")}
    doc = yaml.safe_load(V1_SWEEP.read_text())
    doc["matrix"]["train.seed"] = [0, 1]  # the matrix grew meanwhile
    path = tmp_path / "v1sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = run_harness("run", path, results=results)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("skip (done)") == 3 and proc.stdout.count("  run\n") == 2, proc.stdout
    assert {p: p.read_bytes() for p in before} == before  # never retrained
    store = Store(results, "v1sweep")
    assert len(store.run_ids()) == 5 and all(store.is_done(rid) for rid in store.run_ids())
    assert set(before) <= set(results.rglob("metrics.json"))  # never renamed
