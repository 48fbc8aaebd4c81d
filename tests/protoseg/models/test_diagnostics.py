"""Prototype diagnostics: within-class diversity and prototypes used, recorded at every evaluation of a
nonparametric run (metrics.json, its `evals`, train.log) and never for a parametric one."""
import json

import pytest
import torch

from conftest import tiny_spec
from protoseg import config, diagnostics, engine
from protoseg.models.heads import PrototypeHead


def test_identical_prototypes_have_diversity_one_and_orthogonal_ones_zero():
    same = torch.tensor([0.6, 0.8, 0.0]).repeat(2, 3, 1)  # K=2 classes of M=3 identical prototypes
    assert diagnostics.diversity(same).tolist() == pytest.approx([1.0, 1.0])
    orthogonal = torch.eye(4)[None]  # one class, M=4 orthogonal unit vectors
    assert diagnostics.diversity(orthogonal).tolist() == pytest.approx([0.0])
    mixed = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])  # pairs: 1, 0, 0 -> mean 1/3
    assert diagnostics.diversity(mixed).tolist() == pytest.approx([1 / 3])


def test_one_prototype_per_class_has_no_diversity():
    prototypes = torch.nn.functional.normalize(torch.randn(3, 1, 4), dim=-1)
    assert diagnostics.diversity(prototypes) is None
    result = diagnostics.summary(prototypes, torch.ones(3, 1, dtype=torch.int64), ["a", "b", "c"])
    assert result["prototype_diversity"] is None
    assert result["prototype_diversity_per_class"] == {"a": None, "b": None, "c": None}
    assert result["prototypes_used"] == 1.0


def test_used_counts_the_winner_of_each_pixels_own_class_only():
    # K=2, M=3, one image of 1x4 pixels; winners[b, k, y, x] = class k's nearest prototype at the pixel
    winners = torch.tensor([[[[0, 2, 2, 1]],     # class 0
                             [[1, 1, 0, 2]]]])   # class 1
    labels = torch.tensor([[[0, 0, 1, 255]]])    # the last pixel is ignored (its winners do not count)
    wins = diagnostics.win_counts(winners, labels, num_prototypes=3)
    assert wins.tolist() == [[1, 0, 1], [1, 0, 0]]
    result = diagnostics.summary(torch.eye(3).repeat(2, 1, 1), wins, ["road", "car"])
    assert result["prototypes_used_per_class"] == {"road": 2, "car": 1}
    assert result["prototypes_used"] == 1.5
    assert result["prototype_diversity"] == 0.0


def test_a_class_without_validation_pixels_is_left_out_of_the_used_mean():
    wins = torch.tensor([[3, 0], [0, 0]])
    result = diagnostics.summary(torch.eye(2).repeat(2, 1, 1), wins, ["a", "b"])
    assert result["prototypes_used_per_class"] == {"a": 1, "b": None}
    assert result["prototypes_used"] == 1.0


def test_asking_the_head_for_winners_changes_none_of_its_outputs():
    cfg = {**config.resolve({})["model"]["prototype"], "num_prototypes": 3, "embed_dim": 8}
    head = PrototypeHead(16, 4, cfg).eval()
    feats = torch.randn(2, 16, 5, 6)
    plain, probed = head(feats), head(feats, winners=True)
    assert torch.equal(plain["seg"], probed["seg"])
    emb = head.embed(feats)
    sim = (emb @ head.prototypes.reshape(12, -1).t()).reshape(2, 5, 6, 4, 3)
    assert torch.equal(probed["winners"], sim.argmax(dim=-1).permute(0, 3, 1, 2))


def _run(tmp_path, **model) -> dict:
    spec = tiny_spec(model=model, train={"iterations": 4, "eval_interval": 2, "checkpoint_interval": 4,
                                         "log_interval": 2, "progress": False, "threads": 1})
    engine.run(spec, tmp_path)
    return json.loads((tmp_path / "metrics.json").read_text())


def test_a_prototype_run_records_the_diagnostics_at_every_evaluation(tmp_path):
    saved = _run(tmp_path, head="nonparametric", num_prototypes=2)
    assert [e["iteration"] for e in saved["evals"]] == [2, 4]
    for entry in saved["evals"]:
        assert -1 <= entry["prototype_diversity"] <= 1 and 1 <= entry["prototypes_used"] <= 2
    assert saved["evals"][-1]["prototype_diversity"] == saved["prototype_diversity"]
    assert saved["evals"][-1]["prototypes_used"] == saved["prototypes_used"]
    assert set(saved["prototype_diversity_per_class"]) == set(saved["class_names"])
    assert all(u in (1, 2) for u in saved["prototypes_used_per_class"].values())
    log = (tmp_path / "train.log").read_text()
    assert log.count("prototype diversity") == 2 and "prototypes used" in log


def test_a_parametric_run_records_no_prototype_diagnostics(tmp_path):
    saved = _run(tmp_path, head="parametric")
    assert [e["iteration"] for e in saved["evals"]] == [2, 4]
    keys = set(saved) | {key for entry in saved["evals"] for key in entry}
    assert not {key for key in keys if "prototype" in key}
    assert "prototype" not in (tmp_path / "train.log").read_text()
