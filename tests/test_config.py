import pytest

from protoseg import config


def test_defaults_are_filled_and_input_is_not_mutated():
    given = {"model": {"head": "parametric"}}
    spec = config.resolve(given)
    assert spec["model"]["head"] == "parametric"
    assert spec["model"]["num_prototypes"] == config.DEFAULTS["model"]["num_prototypes"]
    assert set(spec) == {"model", "data", "train", "eval"}
    assert given == {"model": {"head": "parametric"}}


def test_unknown_key_names_source_key_and_valid_keys():
    with pytest.raises(config.SpecError) as err:
        config.resolve({"model": {"num_protoypes": 5}}, source="exp.yaml")
    msg = str(err.value)
    assert "exp.yaml" in msg and "model.num_protoypes" in msg
    assert "did you mean 'num_prototypes'" in msg and "backbone" in msg


def test_unknown_section_is_an_error():
    with pytest.raises(config.SpecError, match="unknown key 'trian'.*did you mean 'train'"):
        config.resolve({"trian": {}})


@pytest.mark.parametrize("key,value", [("train.lr", "fast"), ("train.iterations", 1.5),
                                       ("model.mask_norm", "yes"), ("data.crop_size", [64])])
def test_wrong_type_is_an_error(key, value):
    section, name = key.split(".")
    with pytest.raises(config.SpecError, match=key.replace(".", r"\.")):
        config.resolve({section: {name: value}})


def test_choice_fields_list_valid_values():
    with pytest.raises(config.SpecError, match="valid: gumbel, argmax"):
        config.resolve({"model": {"update_assignment": "sample"}})


def test_int_is_accepted_for_float_field():
    assert config.resolve({"train": {"lr": 1}})["train"]["lr"] == 1.0


def test_load_reports_malformed_yaml_with_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(config.SpecError, match="bad.yaml: malformed YAML"):
        config.load(bad)
