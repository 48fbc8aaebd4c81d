"""Backbones through timm `features_only`, behind registry names.

Contract (as timm's): `build_backbone(cfg)` returns a module whose forward
gives a list of NCHW feature maps at strides 4, 8, 16, 32 (or 4, 8, 8, 8
when dilated to output stride 8), with `.channels` and `.reductions`.
"""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from .._compat import prepare_torchvision

# name -> (timm model name, out_indices of the stride 4..32 stages, extra kwargs, dilatable)
BACKBONES: dict[str, tuple[str, tuple[int, ...], dict, bool]] = {
    "resnet18": ("resnet18", (1, 2, 3, 4), {}, True),
    "resnet50": ("resnet50", (1, 2, 3, 4), {}, True),
    "resnet101": ("resnet101", (1, 2, 3, 4), {}, True),
    # feature_location='' gives the raw HRNet branches (W48: 48+96+192+384 = 720), as the official code
    "hrnet_w18_small": ("hrnet_w18_small", (1, 2, 3, 4), {"feature_location": ""}, False),
    "hrnet_w48": ("hrnet_w48", (1, 2, 3, 4), {"feature_location": ""}, False),
    "convnext_tiny": ("convnext_tiny", (0, 1, 2, 3), {}, False),
    "convnext_small": ("convnext_small", (0, 1, 2, 3), {}, False),
    "convnext_base": ("convnext_base", (0, 1, 2, 3), {}, False),
    "tf_efficientnet_lite0": ("tf_efficientnet_lite0", (1, 2, 3, 4), {}, False),
}


class Backbone(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        self.channels = list(body.feature_info.channels())
        self.reductions = list(body.feature_info.reduction())

    def forward(self, x):
        return list(self.body(x))


def build_backbone(model_cfg: dict) -> Backbone:
    name = model_cfg["backbone"]
    if name not in BACKBONES:
        raise ValueError(f"model.backbone is {name!r}; valid: {', '.join(BACKBONES)}")
    timm_name, out_indices, extra, dilatable = BACKBONES[name]
    kwargs = dict(features_only=True, out_indices=out_indices, **extra)
    stride = model_cfg["output_stride"]
    if stride != 32:
        if not dilatable or stride not in (8, 16):
            valid = "8, 16, 32" if dilatable else "32"
            raise ValueError(f"model.output_stride is {stride} for {name}; valid: {valid}")
        kwargs["output_stride"] = stride
    weights = model_cfg["pretrained"]
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.pretrained: weight file {path} does not exist "
                                    "(weights are never downloaded; give a local .pth/.safetensors file)")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    prepare_torchvision()
    import timm

    return Backbone(timm.create_model(timm_name, **kwargs))
