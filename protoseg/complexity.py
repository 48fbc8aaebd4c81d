"""Parameters, MACs and FLOPs of a segmentor at a stated input size, in eval mode.

Papers' "GFLOPs" are multiply-accumulates (the mmcv / mmengine / fvcore
convention): `macs` here, counted by mmengine.analysis. torch's own
flop_counter counts 2 per multiply-add: `flops` here. Both are stored.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .io import atomic_write_json


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


# the model fields that leave the architecture's counts alone (weights, training-only settings)
NOT_ARCHITECTURE = ("pretrained", "gamma", "update_prototypes", "update_assignment", "sinkhorn_epsilon",
                    "sinkhorn_iterations", "ppc_weight", "ppd_weight", "ppc_temperature", "class_weights",
                    "aux_weight", "drop_path", "dropout")


def measure_cached(model: nn.Module, model_cfg: dict, num_classes: int, size: tuple[int, int],
                   cache: Path | None) -> dict:
    """`measure`, remembered in `cache` (a folder) per architecture, class count and input size: counting
    a large model at 2048x1024 costs minutes on a CPU, and a sweep has many runs of one architecture."""
    if cache is None:
        return measure(model, size)
    arch = {k: v for k, v in model_cfg.items() if k not in NOT_ARCHITECTURE}
    key = hashlib.sha1(json.dumps([arch, num_classes, list(size)], sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache) / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        counts = measure(model, size)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, counts)
        return counts
