import pytest

from protoseg import config


def test_defaults_are_filled_and_input_is_not_mutated():
    given = {"model": {"head": "parametric"}}
    spec = config.resolve(given)
    assert spec["model"]["head"] == "parametric"
    assert spec["model"]["prototype"]["num_prototypes"] == config.DEFAULTS["model"]["prototype"]["num_prototypes"]
    assert set(spec) == {"model", "data", "train", "eval"}
    assert given == {"model": {"head": "parametric"}}


def test_unknown_key_names_source_key_and_valid_keys():
    with pytest.raises(config.SpecError) as err:
        config.resolve({"model": {"prototype": {"num_protoypes": 5}}}, source="exp.yaml")
    msg = str(err.value)
    assert "exp.yaml" in msg and "model.prototype.num_protoypes" in msg
    assert "did you mean 'num_prototypes'" in msg and "gamma" in msg


def test_unknown_section_is_an_error():
    with pytest.raises(config.SpecError, match="unknown key 'trian'.*did you mean 'train'"):
        config.resolve({"trian": {}})


@pytest.mark.parametrize("key,value", [("train.lr", "fast"), ("train.iterations", 1.5),
                                       ("model.prototype.mask_norm", "yes"), ("data.crop_size", [64])])
def test_wrong_type_is_an_error(key, value):
    with pytest.raises(config.SpecError, match=key.replace(".", r"\.")):
        config.resolve(config.set_path({}, key, value))


def test_choice_fields_list_valid_values():
    with pytest.raises(config.SpecError, match="valid: gumbel, argmax"):
        config.resolve({"model": {"prototype": {"update_assignment": "sample"}}})


def test_int_is_accepted_for_float_field():
    assert config.resolve({"train": {"lr": 1}})["train"]["lr"] == 1.0


def test_load_reports_malformed_yaml_with_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(config.SpecError, match="bad.yaml: malformed YAML"):
        config.load(bad)


@pytest.mark.parametrize("key,value,valid", [
    ("train.iterations", -5, r"an integer in \[1, "), ("train.iterations", 0, r"an integer in \[1, "),
    ("model.prototype.gamma", 1.5, r"\[0, 1\]"), ("model.prototype.num_prototypes", 0, r"an integer in \[1, 1,000\]"),
    ("model.prototype.num_prototypes", 10**9, r"an integer in \[1, 1,000\]: every pixel is scored"),
    ("train.seed", -1, r"an integer in \[0, 4,294,967,295\] \(numpy's seed range\)"),
    ("train.seed", 2**32, r"numpy's seed range"), ("data.crop_size", [64, 100_000], r"integers in \[1, 8192\]"),
    ("model.prototype.embed_dim", 10**6, r"\[1, 8,192\] \(channels\)"),
    ("data.batch_size", 0, r"an integer in \[1, 4,096\]"), ("train.lr", 0.0, "finite number > 0"),
    ("train.lr", float("nan"), "finite number > 0"), ("train.lr", float("inf"), "finite number > 0"),
    ("train.device", "gpu", "auto, cpu, cuda, cuda:N"), ("train.threads", 0, "integer >= 1"),
    ("train.threads", "four", "integer >= 1"), ("data.crop_size", [0, 64], r"integers in \[1, 8192\]"),
    ("eval.scales", [1.0, -0.5], "numbers > 0"), ("data.ratio_range", [2.0, 0.5], "low <= high"),
    ("model.output_stride", 12, "8, 16 or 32"), ("model.backbone", "resnet19", "did you mean 'resnet18'"),
    ("data.dataset", "cityscape", "valid: synthetic, camvid"),
])
def test_values_out_of_range_name_the_key_and_what_is_valid(key, value, valid):
    with pytest.raises(config.SpecError, match=valid) as err:
        config.resolve(config.set_path({}, key, value), source="exp.yaml")
    assert "exp.yaml" in str(err.value) and f"'{key}'" in str(err.value)


def test_class_weights_need_one_value_per_class():
    spec = {"data": {"synthetic": {"num_classes": 3}}, "model": {"class_weights": [1.0, 2.0]}}
    with pytest.raises(config.SpecError, match=r"'model.class_weights' has 2 values.*K = 3"):
        config.resolve(spec)
    spec["model"]["class_weights"] = [1, 2, 0.5]
    assert config.resolve(spec)["model"]["class_weights"] == [1, 2, 0.5]
    with pytest.raises(config.SpecError, match="K = 11"):
        config.resolve({"data": {"dataset": "camvid", "root": "/x"}, "model": {"class_weights": [1.0] * 4}})


def test_a_dataset_read_from_disk_needs_its_root():
    with pytest.raises(config.SpecError, match="'data.root' is not set"):
        config.resolve({"data": {"dataset": "camvid"}})


def test_numbers_written_with_an_exponent_are_floats_everywhere(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("train: {lr: 1e-2, weight_decay: 5E-4}\n")
    spec = config.load(path)
    assert spec["train"]["lr"] == 0.01 and spec["train"]["weight_decay"] == 0.0005
    assert config.parse_assignments(["train.lr=1e-3", "train.seed=7", "model.head=parametric"]) == [
        ("train.lr", 0.001), ("train.seed", 7), ("model.head", "parametric")]


@pytest.mark.parametrize("key, value", [("data.std", [128, 0, 128]), ("data.mean", [127, 127]),
                                        ("data.std", [128, float("nan"), 128])])
def test_normalisation_out_of_range_names_the_key(key, value):
    section, name = key.split(".")
    with pytest.raises(config.SpecError, match=rf"'{key}'"):
        config.resolve({section: {name: value}})


def test_the_spec_page_is_written_from_the_field_table():
    from conftest import ROOT
    from protoseg.config import reference

    page = (ROOT / "docs" / "spec.md").read_text()
    assert reference.rewrite(page) == page, "run: python -m protoseg.config.reference docs/spec.md"
    assert "| `model.prototype.num_prototypes` | 10 | an integer in [1, 1,000]" in page
