"""The recipe's optimizer and learning-rate schedule.

Default: the official ProtoSeg (HRNet) recipe, SGD with momentum and a poly
schedule lr * (1 - it / T) ** 0.9, one parameter group. mmseg's recipes add
a linear warm-up (LinearLR from warmup_ratio * lr over warmup_iters), poly
over the remaining iterations down to min_lr (PolyLR eta_min), AdamW, no
weight decay on norm layers and position tables (by name, as mmseg's
paramwise_cfg: ConvModule's BatchNorm is named "bn" and keeps its decay),
and a larger learning rate for the decoder and head (SegFormer: 10x).
Warm-up then poly as mmseg 1.x: PolyLR runs from the end of the warm-up.
One training step (`train_step`) is taken here too, for the engine and for `harness estimate`'s timing.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .losses import total_loss

# mmseg's paramwise custom_keys (Swin, SegFormer): decay_mult 0 where the parameter's name contains one
NO_DECAY_KEYS = ("norm", "relative_position_bias_table", "absolute_pos_embed", "pos_block")
HEAD_MODULES = ("decoder.", "head.", "aux_head.")


def parameter_groups(model: nn.Module, tcfg: dict) -> list[dict]:
    """One group per (weight decay, lr multiplier) the recipe asks for; one group by default."""
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        decay = tcfg["weight_decay"]
        if not tcfg["norm_decay"] and any(key in name for key in NO_DECAY_KEYS):
            decay = 0.0
        mult = tcfg["head_lr_mult"] if name.startswith(HEAD_MODULES) else 1.0
        groups.setdefault((decay, mult), []).append(param)
    return [{"params": params, "weight_decay": decay, "lr": tcfg["lr"] * mult}
            for (decay, mult), params in groups.items()]


def build_optimizer(model: nn.Module, tcfg: dict) -> torch.optim.Optimizer:
    groups = parameter_groups(model, tcfg)
    if tcfg["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=tcfg["lr"], betas=tuple(tcfg["betas"]))
    return torch.optim.SGD(groups, lr=tcfg["lr"], momentum=tcfg["momentum"])


def lr_factor(it: int, tcfg: dict) -> float:
    """The multiplier of each group's lr at iteration `it`: linear warm-up, then poly to min_lr."""
    total, warmup = tcfg["iterations"], min(tcfg["warmup_iters"], tcfg["iterations"])
    if it < warmup:
        return tcfg["warmup_ratio"] + (1 - tcfg["warmup_ratio"]) * it / warmup
    floor = tcfg["min_lr"] / tcfg["lr"]
    progress = (it - warmup) / max(total - warmup, 1)
    return (1 - floor) * max(1 - progress, 0.0) ** tcfg["poly_power"] + floor


def build_scheduler(optimizer: torch.optim.Optimizer, tcfg: dict) -> torch.optim.lr_scheduler.LambdaLR:
    # LambdaLR keeps the checkpoint layout of every earlier version, so their runs resume
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, tcfg))


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               images: torch.Tensor, labels: torch.Tensor, model_cfg: dict, amp: bool,
               inspect: Callable[[torch.Tensor, dict], object] = lambda loss, parts: None):
    """One training step: the forward pass (under autocast when `amp`), the loss and its parts, then
    `inspect(loss, parts)`, which may raise to leave the weights as they are, then backward and the optimizer
    step through `scaler` (AMP's loss scaling; a pass-through when disabled). Returns what `inspect` returned."""
    with torch.autocast(device_type=images.device.type, enabled=amp):
        out = net(images, labels)
    loss, parts = total_loss(out, labels, model_cfg)
    inspected = inspect(loss, parts)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return inspected
