"""The run spec: one plain dict with sections model / data / train / eval.

`DEFAULTS` is the documentation: every field, its default and a comment.
`resolve(spec)` fills the defaults in and rejects unknown keys and values of
the wrong type with an error naming the key path and what would be valid.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

from .io import read_yaml

DEFAULTS: dict[str, Any] = {
    "model": {
        "backbone": "resnet18",        # a name of protoseg.registry.BACKBONES
        "pretrained": None,            # local weight file for the backbone; never downloaded
        "output_stride": 32,           # 8 = dilated last stages (resnet*)
        "decoder": "hrnet",            # stages resized to stride 4, concatenated, Conv3x3-BN-ReLU-Dropout
        "decoder_channels": None,      # None = sum of the backbone's stage channels (HRNet-W48: 720)
        "dropout": 0.1,
        "norm": "BN",                  # BN | SyncBN
        "head": "nonparametric",       # parametric | nonparametric
        "embed_dim": None,             # projection output; None = decoder channels
        "num_prototypes": 10,          # M, prototypes per class
        "gamma": 0.999,                # prototype momentum
        "update_prototypes": True,
        "update_assignment": "gumbel", # gumbel (official) | argmax
        "sinkhorn_epsilon": 0.05,
        "sinkhorn_iterations": 3,
        "proj_norm": "width",          # width (official quirk: L2 over the W axis of NCHW) | none
        "mask_norm": True,             # LayerNorm over the K class scores
        "ppc_weight": 0.01,
        "ppd_weight": 0.001,
        "ppc_temperature": 1.0,        # 1.0 in the official code, 0.1 in the paper
        "class_weights": None,         # list of K floats for the cross-entropy, or None
    },
    "data": {
        "dataset": "synthetic",        # a name of protoseg.registry.DATASETS
        "root": None,                  # dataset folder (camvid)
        "train_split": "train",
        "val_split": "val",
        "crop_size": [128, 128],       # [h, w] random crop for training
        "ratio_range": [0.5, 2.0],     # random resize range for training
        "flip": True,                  # random horizontal flip
        "photometric": True,           # brightness / contrast / saturation / hue jitter
        "batch_size": 8,
        "val_batch_size": 1,
        "num_workers": 0,
        "synthetic": {
            "num_classes": 4,
            "modes_per_class": 2,
            "image_size": [128, 128],  # [h, w]
            "num_train": 64,
            "num_val": 16,
            "seed": 0,
        },
    },
    "train": {
        "iterations": 200,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "poly_power": 0.9,
        "seed": 0,
        "device": "auto",              # auto | cpu | cuda | cuda:N
        "amp": False,                  # mixed precision, CUDA only
        "deterministic": True,
        "threads": None,               # torch CPU threads; None = torch's default
        "log_interval": 10,
        "eval_interval": 0,            # 0 = evaluate only at the end
        "checkpoint_interval": 50,
        "keep_checkpoints": 2,
        "progress": True,              # progress bar / status line on stderr
    },
    "eval": {
        "mode": "whole",               # whole | slide
        "crop_size": [512, 512],       # window of sliding inference
        "stride": [341, 341],
        "scales": [1.0],               # multi-scale: logits summed over scales
        "flip": False,                 # also sum the flipped image's logits
        "complexity_size": [512, 512], # [h, w] input for parameter / MAC / FLOP counts
    },
}

CHOICES: dict[str, tuple] = {
    "model.norm": ("BN", "SyncBN"),
    "model.head": ("parametric", "nonparametric"),
    "model.update_assignment": ("gumbel", "argmax"),
    "model.proj_norm": ("width", "none"),
    "model.decoder": ("hrnet",),
    "eval.mode": ("whole", "slide"),
}

# Keys whose value may be None or of a type other than the default's.
_FREE = {"model.pretrained", "model.decoder_channels", "model.embed_dim", "model.class_weights",
         "data.root", "train.threads"}


class SpecError(ValueError):
    """An invalid run spec: the message names the source, the key and what is valid."""


def _did_you_mean(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _merge(default: dict, given: dict, path: str, source: str) -> dict:
    out = copy.deepcopy(default)
    if not isinstance(given, dict):
        raise SpecError(f"{source}: '{path or 'spec'}' must be a mapping, got {type(given).__name__}")
    for key, value in given.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in default:
            raise SpecError(f"{source}: unknown key '{full}'{_did_you_mean(str(key), default)}; "
                            f"valid keys: {', '.join(default)}")
        if isinstance(default[key], dict):
            out[key] = _merge(default[key], value, full, source)
        else:
            out[key] = _check_value(full, default[key], value, source)
    return out


def _check_value(full: str, default, value, source: str):
    if full in CHOICES and value not in CHOICES[full]:
        raise SpecError(f"{source}: '{full}' is {value!r}{_did_you_mean(str(value), CHOICES[full])}; "
                        f"valid: {', '.join(map(str, CHOICES[full]))}")
    if full in _FREE or default is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list) and len(value) == len(default) if full != "eval.scales" \
            else isinstance(value, list) and len(value) > 0
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise SpecError(f"{source}: '{full}' = {value!r} is not valid; expected a value like "
                        f"{default!r} ({type(default).__name__})")
    return value


def resolve(spec: dict | None = None, source: str = "<spec>") -> dict:
    """Return a full copy of `spec` with every default filled in; raise SpecError when invalid."""
    return _merge(DEFAULTS, spec or {}, "", source)


def load(path: str | Path) -> dict:
    """Read a YAML run spec and resolve it."""
    return resolve(read_yaml(path, "spec file", SpecError), source=str(path))


def parse_assignments(items: list[str], error: type[Exception] = SpecError) -> list[tuple[str, Any]]:
    """Command-line 'key.path=value' items -> [(key.path, value parsed as YAML)]."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise error(f"--set {item!r}: expected key.path=value, e.g. model.head=parametric")
        out.append((key.strip(), yaml.safe_load(value)))
    return out


def get(spec: dict, dotted: str):
    """spec['a']['b'] for 'a.b'."""
    node = spec
    for part in dotted.split("."):
        node = node[part]
    return node
