"""Parameters, MACs and FLOPs of a segmentor at a stated input size, in eval mode.

Papers' "GFLOPs" are multiply-accumulates (the mmcv / mmengine / fvcore
convention): `macs` here, counted by mmengine.analysis. torch's own
flop_counter counts 2 per multiply-add: `flops` here. Both are stored.
"""
from __future__ import annotations

import contextlib
import io

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


class _SegOnly(nn.Module):
    """The model as tracers like it: one tensor in, one tensor out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(images)["seg"]


def _inference_params(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the model as it infers: modules marked `training_only`
    (mmseg's auxiliary head) are left out, as mmseg's counts leave them out."""
    skip = {id(p) for m in model.modules() if getattr(m, "training_only", False) for p in m.parameters()}
    return [p for p in model.parameters() if id(p) not in skip]


def count_params(model: nn.Module) -> dict:
    """Learnable = parameters with requires_grad; total adds the rest and the
    buffers that are model state, such as the prototypes (BN statistics excluded)."""
    params = _inference_params(model)
    learnable = sum(p.numel() for p in params if p.requires_grad)
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    state_buffers = sum(b.numel() for name, b in model.named_buffers() if name.endswith("prototypes"))
    return {"params_learnable": learnable, "params_total": learnable + frozen + state_buffers}


@torch.no_grad()
def count_macs_flops(model: nn.Module, size: tuple[int, int]) -> dict:
    """MACs (mmengine) and FLOPs (torch.utils.flop_counter) of one (1, 3, H, W) image."""
    from mmengine.analysis import FlopAnalyzer

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        image = torch.zeros(1, 3, *size, device=device)
        wrapped = _SegOnly(model)
        analyzer = FlopAnalyzer(wrapped, (image,))
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with contextlib.redirect_stdout(io.StringIO()):
            macs = int(analyzer.total())
        counter = FlopCounterMode(display=False)
        with counter:
            wrapped(image)
        flops = int(counter.get_total_flops())
    finally:
        model.train(was_training)
    return {"macs": macs, "flops": flops, "complexity_input": list(size),
            "gflops_convention": "macs (mmengine: 1 multiply-add = 1 FLOP); flops = torch.utils.flop_counter (2 per multiply-add)"}


def measure(model: nn.Module, size: tuple[int, int]) -> dict:
    return {**count_params(model), **count_macs_flops(model, size)}
