import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from protoseg import complexity, losses, metrics


def test_ppd_is_mean_squared_cosine_distance_over_valid_pixels():
    logits = torch.tensor([[0.5, 0.1], [0.2, 0.9], [0.3, 0.3]])
    target = torch.tensor([0, 1, -1])
    expected = ((1 - 0.5) ** 2 + (1 - 0.9) ** 2) / 2
    assert losses.ppd_loss(logits, target).item() == pytest.approx(expected)


def test_ppc_ignores_minus_one_and_applies_temperature():
    logits = torch.tensor([[0.5, 0.1], [0.2, 0.9], [9.0, -9.0]])
    target = torch.tensor([0, 1, -1])
    plain = losses.ppc_loss(logits, target)
    manual = torch.nn.functional.cross_entropy(logits[:2], target[:2])
    assert plain.item() == pytest.approx(manual.item())
    sharp = losses.ppc_loss(logits, target, temperature=0.1)
    assert sharp.item() == pytest.approx(torch.nn.functional.cross_entropy(logits[:2] / 0.1, target[:2]).item())


def test_cross_entropy_upsamples_and_ignores_255():
    seg = torch.zeros(1, 3, 2, 2)
    seg[:, 1] = 5.0
    labels = torch.full((1, 8, 8), 255)
    labels[0, 0, 0] = 1
    loss = losses.seg_cross_entropy(seg, labels)
    assert loss.item() == pytest.approx(-math.log(math.exp(5) / (math.exp(5) + 2)), rel=1e-5)


def test_total_loss_weights_the_prototype_terms():
    out = {"seg": torch.zeros(1, 2, 2, 2), "proto_logits": torch.tensor([[0.2, 0.4]]),
           "proto_target": torch.tensor([1])}
    labels = torch.zeros(1, 2, 2, dtype=torch.long)
    cfg = {"class_weights": None, "prototype": {"ppc_temperature": 1.0, "ppc_weight": 0.5, "ppd_weight": 2.0}}
    loss, parts = losses.total_loss(out, labels, cfg)
    assert loss.item() == pytest.approx((parts["ce"] + 0.5 * parts["ppc"] + 2.0 * parts["ppd"]).item())
    assert parts["ppd"].item() == pytest.approx(0.36)


def test_iou_from_a_known_confusion_matrix():
    pred = torch.tensor([0, 0, 1, 1, 1, 2])
    label = torch.tensor([0, 1, 1, 1, 255, 0])
    conf = metrics.confusion(pred, label, 4)
    assert conf.tolist() == [[1, 0, 1, 0], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    result = metrics.summarise(conf, ["a", "b", "c", "d"])
    # a: TP1 FP1 FN1 -> 1/3; b: TP2 FP0 FN1 -> 2/3; c: predicted, never true -> 0; d: absent -> NaN
    assert result["per_class_iou"] == {"a": pytest.approx(100 / 3, abs=1e-3),
                                       "b": pytest.approx(200 / 3, abs=1e-3), "c": 0.0, "d": None}
    assert result["mIoU"] == pytest.approx(100 / 3, abs=1e-3)
    assert result["aAcc"] == pytest.approx(60.0)
    assert result["mAcc"] == pytest.approx((50 + 200 / 3) / 2, abs=1e-3)


def test_empty_confusion_gives_no_numbers_not_errors():
    result = metrics.summarise(np.zeros((3, 3)))
    assert result["mIoU"] is None and result["aAcc"] is None


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.register_buffer("prototypes", torch.zeros(2, 3, 4))

    def forward(self, x):
        return {"seg": self.conv(x)}


def test_macs_follow_the_papers_convention_and_flops_count_two_per_mac():
    result = complexity.measure(_TinyNet(), (8, 8))
    assert result["macs"] == 8 * 8 * 8 * 27
    assert result["flops"] == 2 * result["macs"]
    assert result["params_learnable"] == 8 * 27
    assert result["params_total"] == 8 * 27 + 24


def test_complexity_restores_training_mode():
    net = _TinyNet().train()
    complexity.measure(net, (8, 8))
    assert net.training
