"""harness.matrix: an experiment YAML becomes fully resolved run specs with
stable run ids; an invalid file is rejected as a whole, with an error that
names the file, the key path and what would be valid."""
from __future__ import annotations

import copy
import textwrap

import pytest
import yaml

from conftest import tiny_spec
from harness import matrix
from harness.matrix import MatrixError


def write(tmp_path, doc, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def experiment(**extra) -> dict:
    doc = {"sweep": "unit", "base": tiny_spec()}
    doc.update(extra)
    return doc


def ids(sweep) -> list[str]:
    return [r.run_id for r in sweep.runs]


def expand(doc, source="exp.yaml", overrides=()):
    return matrix.expand_doc(doc, source, overrides)


# ---- expansion ---------------------------------------------------------------------------

def test_cartesian_product_has_one_run_per_cell():
    sweep = expand(experiment(matrix={"model.head": ["nonparametric"], "model.prototype.num_prototypes": [1, 2, 3],
                                      "train.seed": [0, 1]}))
    assert len(sweep.runs) == 3 * 2
    assert len(set(ids(sweep))) == 6
    assert sweep.axes == ["model.head", "model.prototype.num_prototypes", "train.seed"]
    seen = {(r.spec["model"]["prototype"]["num_prototypes"], r.spec["train"]["seed"]) for r in sweep.runs}
    assert seen == {(m, s) for m in (1, 2, 3) for s in (0, 1)}
    for run in sweep.runs:  # settings are the cell's axis values, and the spec carries them
        assert run.spec["model"]["prototype"]["num_prototypes"] == run.settings["model.prototype.num_prototypes"]
        assert run.spec["train"]["seed"] == run.settings["train.seed"]


def test_no_matrix_is_one_run_of_the_base():
    sweep = expand(experiment())
    assert len(sweep.runs) == 1
    assert sweep.runs[0].spec["model"]["backbone"] == "resnet18"
    assert sweep.runs[0].spec["train"]["iterations"] == tiny_spec()["train"]["iterations"]


def test_every_default_is_filled_in():
    from protoseg import config

    spec = expand(experiment()).runs[0].spec
    assert spec == config.resolve(spec)  # already fully resolved
    assert set(spec["model"]) == set(config.DEFAULTS["model"])


def test_exclude_drops_cells_matching_every_given_value():
    doc = experiment(matrix={"model.prototype.num_prototypes": [1, 2, 3], "train.seed": [0, 1]},
                     exclude=[{"model.prototype.num_prototypes": 3, "train.seed": 1}, {"model.prototype.num_prototypes": 1}])
    cells = {(r.settings["model.prototype.num_prototypes"], r.settings["train.seed"]) for r in expand(doc).runs}
    assert cells == {(2, 0), (2, 1), (3, 0)}


def test_include_adds_cells_after_the_product_and_their_axes():
    doc = experiment(matrix={"model.prototype.num_prototypes": [1, 2]},
                     include=[{"model.prototype.num_prototypes": 5, "train.lr": 0.02}])
    sweep = expand(doc)
    assert len(sweep.runs) == 3
    extra = sweep.runs[-1]
    assert extra.spec["model"]["prototype"]["num_prototypes"] == 5 and extra.spec["train"]["lr"] == 0.02
    assert sweep.axes == ["model.prototype.num_prototypes", "train.lr"]


def test_include_of_an_existing_cell_does_not_duplicate_it():
    doc = experiment(matrix={"model.prototype.num_prototypes": [1, 2]}, include=[{"model.prototype.num_prototypes": 2}])
    assert len(expand(doc).runs) == 2


def test_presets_are_applied():
    doc = experiment(presets={"small": {"model.decoder_channels": 32, "train.lr": 0.05},
                              "big": {"model.decoder_channels": 64, "data.synthetic.num_classes": 6}},
                     matrix={"preset": ["small", "big"], "train.seed": [0]})
    small, big = expand(doc).runs
    assert small.settings["preset"] == "small"
    assert small.spec["model"]["decoder_channels"] == 32 and small.spec["train"]["lr"] == 0.05
    assert big.spec["model"]["decoder_channels"] == 64 and big.spec["data"]["synthetic"]["num_classes"] == 6
    assert big.spec["train"]["lr"] == 0.01  # the default: presets do not leak into each other
    assert small.run_id != big.run_id


def test_unknown_preset_names_the_valid_presets():
    doc = experiment(presets={"small": {"train.lr": 0.05}, "big": {"train.lr": 0.1}},
                     matrix={"preset": ["smal"]})
    with pytest.raises(MatrixError) as err:
        expand(doc, "sweeps/p.yaml")
    text = str(err.value)
    assert "sweeps/p.yaml" in text and "'smal'" in text
    assert "small" in text and "big" in text
    assert "did you mean 'small'" in text


def test_preset_with_an_unknown_spec_path_names_the_preset():
    doc = experiment(presets={"small": {"model.bakbone": "resnet50"}}, matrix={"preset": ["small"]})
    with pytest.raises(MatrixError, match=r"exp\.yaml: presets\.small: unknown spec path 'model\.bakbone'.*did you mean 'backbone'"):
        expand(doc)


# ---- run ids ------------------------------------------------------------------------------

def test_run_id_is_stable_across_calls(tmp_path):
    doc = experiment(matrix={"model.head": ["parametric", "nonparametric"], "train.seed": [0, 1]})
    path = write(tmp_path, doc)
    first = ids(matrix.load(path))
    assert first == ids(matrix.load(path)) == ids(expand(copy.deepcopy(doc)))
    assert all(len(r) == 12 and int(r, 16) >= 0 for r in first)  # short hex hash, a folder name


def test_run_id_does_not_depend_on_key_order_in_the_yaml(tmp_path):
    a = write(tmp_path, textwrap.dedent("""
        sweep: order
        base:
          model: {backbone: resnet18, num_prototypes: 2, decoder_channels: 32}
          data: {crop_size: [64, 64], batch_size: 2}
          train: {iterations: 5, lr: 0.02}
        matrix:
          model.head: [parametric, nonparametric]
          train.seed: [0, 1]
        """), "a.yaml")
    b = write(tmp_path, textwrap.dedent("""
        matrix:
          train.seed: [1, 0]
          model.head: [nonparametric, parametric]
        base:
          train: {lr: 0.02, iterations: 5}
          data: {batch_size: 2, crop_size: [64, 64]}
          model: {decoder_channels: 32, num_prototypes: 2, backbone: resnet18}
        sweep: order
        """), "b.yaml")
    assert sorted(ids(matrix.load(a))) == sorted(ids(matrix.load(b)))


@pytest.mark.parametrize("path, value", [("train.threads", 7), ("train.progress", True),
                                         ("data.num_workers", 3), ("train.device", "cpu")])
def test_run_id_ignores_resource_fields(path, value):
    plain = expand(experiment()).runs[0]
    section, key = path.split(".")
    doc = experiment()
    doc["base"][section][key] = value
    changed = expand(doc).runs[0]
    assert changed.spec[section][key] == value  # the run still gets the setting ...
    assert changed.run_id == plain.run_id       # ... but it is the same experiment


@pytest.mark.parametrize("path, value", [("train.seed", 1), ("train.iterations", 7), ("train.lr", 0.02),
                                         ("model.backbone", "resnet50"), ("data.synthetic.num_val", 5),
                                         ("model.prototype.num_prototypes", 3), ("eval.flip", True)])
def test_run_id_changes_when_a_real_field_changes(path, value):
    plain = expand(experiment()).runs[0].run_id
    doc = experiment(matrix={path: [value]})
    assert expand(doc).runs[0].run_id != plain


def test_run_id_does_not_depend_on_int_or_float_spelling():
    assert ids(expand(experiment(matrix={"train.lr": [1]}))) == ids(expand(experiment(matrix={"train.lr": [1.0]})))


def test_adding_a_value_to_an_axis_keeps_the_old_run_ids():
    old = expand(experiment(matrix={"model.prototype.num_prototypes": [1, 2], "train.seed": [0, 1]}))
    new = expand(experiment(matrix={"model.prototype.num_prototypes": [1, 2, 5], "train.seed": [0, 1, 2]}))
    assert set(ids(old)) < set(ids(new))
    assert len(new.runs) == 9


def test_a_matrix_axis_equal_to_the_base_value_keeps_the_base_run_id():
    """Moving a value from base into a one-value axis is the same experiment."""
    base_only = expand(experiment()).runs[0].run_id
    as_axis = expand(experiment(matrix={"train.seed": [0]})).runs[0].run_id
    assert base_only == as_axis


def test_parametric_cells_that_differ_only_in_prototype_fields_collapse():
    doc = experiment(matrix={"model.head": ["parametric", "nonparametric"],
                             "model.prototype.num_prototypes": [1, 2, 5], "model.prototype.gamma": [0.99, 0.999]})
    sweep = expand(doc)
    parametric = [r for r in sweep.runs if r.spec["model"]["head"] == "parametric"]
    assert len(parametric) == 1
    assert len(sweep.runs) == 1 + 3 * 2
    # the parametric run's settings no longer mention the meaningless prototype fields
    assert parametric[0].settings == {"model.head": "parametric"}
    # and its prototype fields are the defaults, whatever the first cell said
    from protoseg import config

    assert parametric[0].spec["model"]["prototype"] == config.DEFAULTS["model"]["prototype"]


def test_parametric_run_id_does_not_depend_on_prototype_fields_in_base():
    a = experiment(matrix={"model.head": ["parametric"]})
    b = experiment(matrix={"model.head": ["parametric"]})
    b["base"]["model"]["prototype"] = {"num_prototypes": 7, "ppc_weight": 0.5, "update_assignment": "argmax"}
    assert ids(expand(a)) == ids(expand(b))


def test_cells_that_differ_only_in_another_decoders_options_collapse():
    doc = experiment(matrix={"model.decoder": ["fcn", "upernet"],
                             "model.decoder_options.upernet.pool_scales": [[1, 2, 3, 6], [1, 3]]})
    runs = expand(doc).runs
    assert sorted(r.value("model.decoder") for r in runs) == ["fcn", "upernet", "upernet"]
    fcn = next(r for r in runs if r.value("model.decoder") == "fcn")
    assert fcn.settings == {"model.decoder": "fcn"} and fcn.value("model.decoder_options.upernet.pool_scales") == \
        [1, 2, 3, 6]


def test_parametric_cells_differing_in_a_real_field_do_not_collapse():
    doc = experiment(matrix={"model.head": ["parametric"], "model.dropout": [0.0, 0.1]})
    assert len(expand(doc).runs) == 2


# ---- errors ------------------------------------------------------------------------------

def load_error(tmp_path, doc, name="bad.yaml", overrides=()) -> str:
    path = write(tmp_path, doc, name)
    with pytest.raises(MatrixError) as err:
        matrix.load(path, overrides)
    text = str(err.value)
    assert str(path) in text, f"the error does not name the file: {text}"
    return text


def test_unknown_top_level_key(tmp_path):
    text = load_error(tmp_path, experiment(matrx={"train.seed": [0]}))
    assert "'matrx'" in text and "did you mean 'matrix'" in text


def test_unknown_spec_path_in_matrix(tmp_path):
    text = load_error(tmp_path, experiment(matrix={"model.prototype.num_protoypes": [1, 2]}))
    assert "model.prototype.num_protoypes" in text and "did you mean 'num_prototypes'" in text


def test_unknown_section_in_matrix(tmp_path):
    text = load_error(tmp_path, experiment(matrix={"modle.head": ["parametric"]}))
    assert "modle.head" in text and "did you mean 'model'" in text


def test_unknown_key_in_base(tmp_path):
    doc = experiment()
    doc["base"]["train"]["iteratons"] = 5
    text = load_error(tmp_path, doc)
    assert "train.iteratons" in text and "did you mean 'iterations'" in text


def test_wrong_value_type_names_the_key_and_the_expected_type(tmp_path):
    text = load_error(tmp_path, experiment(matrix={"model.prototype.num_prototypes": [2, "ten"]}))
    assert "model.prototype.num_prototypes" in text and "'ten'" in text and "int" in text


def test_wrong_choice_gives_did_you_mean(tmp_path):
    text = load_error(tmp_path, experiment(matrix={"model.head": ["paramteric"]}))
    assert "model.head" in text and "did you mean 'parametric'" in text and "nonparametric" in text


def test_unknown_backbone(tmp_path):
    text = load_error(tmp_path, experiment(matrix={"model.backbone": ["resnet18", "resnet19"]}))
    assert "model.backbone" in text and "'resnet19'" in text and "did you mean 'resnet18'" in text
    assert "hrnet_w48" in text  # the valid names are listed


def test_unknown_dataset(tmp_path):
    text = load_error(tmp_path, experiment(matrix={"data.dataset": ["camvd"]}))
    assert "data.dataset" in text and "did you mean 'camvid'" in text and "synthetic" in text


def test_unknown_executor_key(tmp_path):
    text = load_error(tmp_path, experiment(executor={"backend": "local", "jbos": 2}))
    assert "executor.jbos" in text and "did you mean 'jobs'" in text


def test_unknown_executor_backend(tmp_path):
    text = load_error(tmp_path, experiment(executor={"backend": "slrum"}))
    assert "executor.backend" in text and "did you mean 'slurm'" in text


@pytest.mark.parametrize("executor", [{"jobs": "two"}, {"jobs": -1}, {"stale_after": "soon"}])
def test_wrong_executor_value_type(tmp_path, executor):
    text = load_error(tmp_path, experiment(executor=executor))
    assert "executor." + next(iter(executor)) in text


def test_malformed_yaml(tmp_path):
    text = load_error(tmp_path, "sweep: x\nmatrix: {model.head: [parametric\n")
    assert "malformed YAML" in text


def test_missing_file(tmp_path):
    with pytest.raises(MatrixError, match="no such experiment file"):
        matrix.load(tmp_path / "nope.yaml")


def test_axis_that_is_not_a_list(tmp_path):
    text = load_error(tmp_path, experiment(matrix={"model.head": "parametric"}))
    assert "matrix.model.head" in text and "list" in text


def test_bad_sweep_name(tmp_path):
    text = load_error(tmp_path, experiment(sweep="a/../b"))
    assert "sweep name" in text


def test_error_names_the_cell(tmp_path):
    text = load_error(tmp_path, experiment(matrix={"model.head": ["nonparametric"], "model.backbone": ["resnt18"]}))
    assert "model.backbone=resnt18" in text


def test_nothing_is_expanded_when_any_cell_is_invalid(tmp_path):
    """One bad cell among good ones: the whole file is rejected, no partial list of runs."""
    doc = experiment(matrix={"model.prototype.num_prototypes": [1, 2, 3], "model.backbone": ["resnet18", "resnet19"]})
    path = write(tmp_path, doc)
    result = None
    with pytest.raises(MatrixError):
        result = matrix.load(path)
    assert result is None
    # an invalid include after valid product cells, too
    doc = experiment(matrix={"model.prototype.num_prototypes": [1, 2]}, include=[{"train.iterations": "many"}])
    with pytest.raises(MatrixError, match="train.iterations"):
        expand(doc)


def test_exclude_with_an_unknown_axis_is_an_error(tmp_path):
    text = load_error(tmp_path, experiment(matrix={"model.head": ["parametric", "nonparametric"]},
                                           exclude=[{"model.haed": "parametric"}]))
    assert "exclude" in text and "model.haed" in text


def test_preset_that_is_not_a_mapping(tmp_path):
    text = load_error(tmp_path, experiment(presets={"small": ["train.lr", 0.1]}, matrix={"preset": ["small"]}))
    assert "presets.small" in text


# ---- --set overrides -------------------------------------------------------------------

def test_parse_overrides_parses_values_as_yaml():
    assert matrix.parse_overrides(["executor.jobs=2", "base.train.lr=0.5", "base.model.head=parametric",
                                   "base.data.crop_size=[32, 32]"]) == [
        ("executor.jobs", 2), ("base.train.lr", 0.5), ("base.model.head", "parametric"),
        ("base.data.crop_size", [32, 32])]


@pytest.mark.parametrize("item", ["executor.jobs", "=2", ""])
def test_parse_overrides_rejects_items_without_key_and_value(item):
    with pytest.raises(MatrixError, match="key.path=value"):
        matrix.parse_overrides([item])


def test_set_overrides_executor_jobs_and_base_iterations(tmp_path):
    doc = experiment(matrix={"train.seed": [0, 1]}, executor={"backend": "local", "jobs": 1})
    path = write(tmp_path, doc)
    plain = matrix.load(path)
    over = matrix.load(path, matrix.parse_overrides(["executor.jobs=3", "base.train.iterations=11"]))
    assert plain.executor["jobs"] == 1 and over.executor["jobs"] == 3
    assert all(r.spec["train"]["iterations"] == 11 for r in over.runs)
    assert set(ids(over)).isdisjoint(ids(plain))  # iterations is part of the experiment
    # executor settings are not part of the experiment
    jobs_only = matrix.load(path, matrix.parse_overrides(["executor.jobs=3"]))
    assert ids(jobs_only) == ids(plain)
    # the file is not modified by an override
    assert yaml.safe_load(path.read_text()) == doc


def test_set_base_path_absent_from_the_file(tmp_path):
    doc = {"sweep": "bare", "matrix": {"train.seed": [0]}}
    sweep = matrix.load(write(tmp_path, doc), [("base.model.decoder_channels", 16)])
    assert sweep.runs[0].spec["model"]["decoder_channels"] == 16


def test_matrix_axis_wins_over_a_base_override(tmp_path):
    sweep = matrix.load(write(tmp_path, experiment(matrix={"train.iterations": [3]})),
                        [("base.train.iterations", 9)])
    assert sweep.runs[0].spec["train"]["iterations"] == 3


@pytest.mark.parametrize("item, words", [
    ("foo.bar=1", ["--set foo.bar", "executor.<key>", "base.<spec path>"]),
    ("base=1", ["--set base"]),
    ("base.model.prototype.num_protoypes=3", ["model.prototype.num_protoypes", "did you mean 'num_prototypes'"]),
    ("executor.jbos=3", ["executor.jbos", "did you mean 'jobs'"]),
    ("base.train.iterations=many", ["train.iterations", "'many'"]),
])
def test_bad_set_key_is_an_error(tmp_path, item, words):
    text = load_error(tmp_path, experiment(), overrides=matrix.parse_overrides([item]))
    for word in words:
        assert word in text


def test_set_executor_when_the_file_has_an_empty_executor_section(tmp_path):
    path = write(tmp_path, "sweep: nullexec\nbase: {train: {iterations: 3}}\nexecutor:\n")
    assert matrix.load(path, [("executor.jobs", 3)]).executor["jobs"] == 3
