"""The recipe's optimizer, parameter groups and schedule (protoseg.optim)."""
from __future__ import annotations

import pytest
import torch

from protoseg import config
from protoseg.models import build_model
from protoseg.optim import build_optimizer, build_scheduler, lr_factor


def _model(**model):
    return build_model(config.resolve({"model": {"backbone": "resnet18", "decoder_channels": 16, **model}})["model"], 4)


def _train(**train):
    return config.resolve({"train": train})["train"]


def test_the_default_is_the_official_recipe_one_sgd_group_and_poly():
    model, tcfg = _model(), _train(iterations=100)
    optimizer = build_optimizer(model, tcfg)
    assert isinstance(optimizer, torch.optim.SGD) and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.01 and group["momentum"] == 0.9 and group["weight_decay"] == 5e-4
    assert len(group["params"]) == len(list(model.parameters()))
    for it in (0, 1, 37, 99, 100, 120):
        assert lr_factor(it, tcfg) == max(1 - it / 100, 0.0) ** 0.9  # the factor of every earlier version


def test_norm_decay_off_exempts_parameters_named_as_mmseg_does():
    model = _model()
    model.decoder.register_parameter("pos_block", torch.nn.Parameter(torch.zeros(3)))
    optimizer = build_optimizer(model, _train(norm_decay=False, weight_decay=0.01))
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    named = dict(model.named_parameters())
    assert {id(named[n]) for n in ("head.feat_norm.weight", "head.feat_norm.bias", "decoder.pos_block")} <= no_decay
    assert id(named["decoder.conv.bn.weight"]) not in no_decay  # mmseg's key 'norm' misses ConvModule's 'bn'
    assert id(named["decoder.conv.conv.weight"]) not in no_decay
    assert len(no_decay) == sum(("norm" in n or "pos_block" in n) for n in named)


def test_head_lr_mult_raises_decoder_and_head_lr_only():
    model = _model(head="parametric")
    optimizer = build_optimizer(model, _train(head_lr_mult=10.0, lr=6e-5, optimizer="adamw", weight_decay=0.01))
    assert isinstance(optimizer, torch.optim.AdamW)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert all(lr_of[id(p)] == pytest.approx(6e-4) for p in model.head.parameters())
    assert all(lr_of[id(p)] == pytest.approx(6e-4) for p in model.decoder.parameters())
    assert all(lr_of[id(p)] == pytest.approx(6e-5) for p in model.backbone.parameters())


def test_warmup_then_poly_to_min_lr_as_mmseg():
    tcfg = _train(iterations=1000, warmup_iters=100, warmup_ratio=1e-6, poly_power=1.0, min_lr=1e-4, lr=0.01)
    assert lr_factor(0, tcfg) == pytest.approx(1e-6)
    assert lr_factor(50, tcfg) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert lr_factor(100, tcfg) == pytest.approx(1.0)
    assert lr_factor(550, tcfg) == pytest.approx(0.01 + 0.99 * 0.5)  # halfway through poly, power 1
    assert lr_factor(1000, tcfg) == pytest.approx(0.01)  # min_lr / lr
    model = _model()
    optimizer = build_optimizer(model, tcfg)
    scheduler = build_scheduler(optimizer, tcfg)
    seen = []
    for _ in range(101):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(1e-8) and seen[100] == pytest.approx(0.01)
    assert all(a < b for a, b in zip(seen[:100], seen[1:101]))


@pytest.mark.parametrize("key, value", [("train.optimizer", "adam"), ("train.warmup_ratio", 0.0),
                                        ("train.head_lr_mult", 0), ("train.betas", [0.9, 1.5])])
def test_bad_recipe_values_name_the_key(key, value):
    section, name = key.split(".")
    with pytest.raises(config.SpecError, match=rf"'{key}'"):
        config.resolve({section: {name: value}})
