"""The run spec: one plain dict with sections model / data / train / eval.

`DEFAULTS` is the documentation: every field, its default and a comment.
`resolve(spec)` fills the defaults in and rejects unknown keys, values of the
wrong type and values out of range with an error naming the key path and what
would be valid.

The spec's history (`HISTORY`) keeps old specs meaning what they meant:
- Adding a key whose default reproduces the old behaviour needs no entry; it
  changes no run id (see harness/identity.py).
- Renaming a key or changing what a default means adds a spec version:
  `{"version": 2, "renamed": {"old.path": "new.path"}, "defaults": {"model.x": OLD_DEFAULT}}`.
  An old name is accepted with a one-line notice; a sweep planned at an older
  version keeps the old defaults, with a notice (harness/matrix.py).
"""
from __future__ import annotations

import copy
import difflib
import math
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from .io import load_yaml, read_yaml
from .registry import BACKBONES, DATASETS, NEEDS_ROOT, NUM_CLASSES

DEFAULTS: dict[str, Any] = {
    "model": {
        "backbone": "resnet18",        # a name of protoseg.registry.BACKBONES
        "pretrained": None,            # local weight file for the backbone; never downloaded
        "output_stride": 32,           # 8 = dilated last stages (resnet*)
        "decoder": "hrnet",            # hrnet: stages resized to stride 4, concatenated, Conv3x3-BN-ReLU-Dropout;
                                       # fcn (mmseg FCNHead) | upernet (PPM + FPN) | segformer (all-MLP)
        "aux_head": False,             # mmseg's auxiliary FCN head on stage 3, training only
        "aux_weight": 0.4,             # its loss weight
        "drop_path": 0.0,              # stochastic depth of transformer backbones (Swin recipe: 0.3)
        "decoder_channels": None,      # None = the decoder's default: hrnet the sum of the stage channels
                                       # (HRNet-W48: 720), fcn 512, upernet 512, segformer 256 (mmseg's)
        "decoder_kernel": None,        # hrnet's fusion conv: None = 3 (official code, 4.67 M at W48) | 1 (mmseg's
                                       # FCNHead kernel_size=1, the model of the paper's 65.9 M)
        "dropout": 0.1,
        "norm": "BN",                  # BN | SyncBN: every BatchNorm (backbone, decoder, aux head) synchronised
                                       # across processes; a single-process or CPU run keeps BatchNorm
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
        "mean": [123.675, 116.28, 103.53],  # RGB, 0..255: image = (image - mean) / std. ImageNet (mmseg);
        "std": [58.395, 57.12, 57.375],     # TF-ported EfficientNet-Lite weights want [127]*3 / [128]*3
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
        "optimizer": "sgd",            # sgd (official) | adamw (mmseg's transformer recipes)
        "lr": 0.01,
        "momentum": 0.9,               # sgd
        "betas": [0.9, 0.999],         # adamw
        "weight_decay": 5e-4,
        "norm_decay": True,            # False: no weight decay where a name has norm or a position table (mmseg)
        "head_lr_mult": 1.0,           # lr multiplier of decoder and head (SegFormer recipe: 10)
        "warmup_iters": 0,             # linear warm-up from warmup_ratio * lr (mmseg LinearLR)
        "warmup_ratio": 1e-6,
        "poly_power": 0.9,             # then lr * (1 - t / T) ** power down to min_lr (mmseg PolyLR)
        "min_lr": 0.0,
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
        "resize": None,                # [long, short]: rescale into that box first, keeping the ratio
                                       # (mmseg's test Resize; ADE20K / COCO-Stuff [2048, 512])
        "crop_size": [512, 512],       # window of sliding inference
        "stride": [341, 341],
        "scales": [1.0],               # multi-scale: logits summed over scales
        "flip": False,                 # also sum the flipped image's logits
        "complexity_size": [512, 512], # [h, w] input for parameter / MAC / FLOP counts
        "fps_images": 200,             # inference FPS over this many val images at batch 1 (0 = off),
        "fps_warmup": 5,               # after this many untimed (MMSegmentation's benchmark tool)
        "fps_max_s": 60.0,             # or as many as this many seconds allow
    },
}

SPEC_VERSION = 1
HISTORY: list[dict] = []  # one entry per version after 1, oldest first (see the module docstring)

CHOICES: dict[str, tuple] = {
    "model.backbone": tuple(BACKBONES),
    "data.dataset": tuple(DATASETS),
    "model.norm": ("BN", "SyncBN"),
    "model.head": ("parametric", "nonparametric"),
    "model.update_assignment": ("gumbel", "argmax"),
    "train.optimizer": ("sgd", "adamw"),
    "model.proj_norm": ("width", "none"),
    "model.decoder": ("hrnet", "fcn", "upernet", "segformer"),
    "eval.mode": ("whole", "slide"),
}

# Keys whose value may be None or of a type other than the default's.
_FREE = {"model.pretrained", "model.decoder_channels", "model.embed_dim", "model.class_weights",
         "data.root", "train.threads"}




def _count(minimum: int = 1, maximum: int | None = None, why: str = "") -> tuple[Callable, str]:
    if maximum is None:
        return (lambda v: v >= minimum), f"an integer >= {minimum}"
    return (lambda v: minimum <= v <= maximum), f"an integer in [{minimum}, {maximum:,}]{why}"


SEED = _count(0, 2**32 - 1, " (numpy's seed range)")
SIDE = 8192  # pixels: a crop, an image or a stride longer than this is a typo, not a model
_SIDES = ((lambda v: all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= SIDE for x in v)),
          f"[h, w] of integers in [1, {SIDE}]")
WIDTH = _count(1, 8192, " (channels)")


def _positive(v) -> bool:
    return math.isfinite(v) and v > 0


_POSITIVE = (_positive, "a finite number > 0")
_FRACTION = ((lambda v: 0 <= v <= 1), "a number in [0, 1]")
_NON_NEGATIVE = ((lambda v: math.isfinite(v) and v >= 0), "a finite number >= 0")


def _device(v) -> bool:
    head, _, index = v.partition(":")
    return v in ("auto", "cpu", "cuda", "mps") or (head == "cuda" and index.isdigit())


# Ranges beyond the type; None is allowed wherever the default is None.
RULES: dict[str, tuple[Callable, str]] = {
    "model.output_stride": ((lambda v: v in (8, 16, 32)), "8, 16 or 32"),
    "model.decoder_channels": WIDTH,
    "model.decoder_kernel": ((lambda v: type(v) is int and v in (1, 3)), "null, 1 or 3"),
    "model.dropout": ((lambda v: 0 <= v < 1), "a number in [0, 1)"),
    "model.aux_weight": _NON_NEGATIVE,
    "train.betas": ((lambda v: all(isinstance(x, (int, float)) and 0 <= x < 1 for x in v)), "[b1, b2] in [0, 1)"),
    "train.head_lr_mult": _POSITIVE,
    "train.warmup_iters": _count(0),
    "train.warmup_ratio": ((lambda v: 0 < v <= 1), "a number in (0, 1]"),
    "train.min_lr": _NON_NEGATIVE,
    "model.drop_path": ((lambda v: 0 <= v < 1), "a number in [0, 1)"),
    "model.embed_dim": WIDTH,
    "model.num_prototypes": _count(1, 1000, ": every pixel is scored against classes x M prototypes, and the "
                                            "paper uses up to 20"),
    "model.gamma": _FRACTION,
    "model.sinkhorn_epsilon": _POSITIVE,
    "model.sinkhorn_iterations": _count(1, 1000),
    "model.ppc_weight": _NON_NEGATIVE,
    "model.ppd_weight": _NON_NEGATIVE,
    "model.ppc_temperature": _POSITIVE,
    "model.class_weights": ((lambda v: isinstance(v, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in v)),
        "null or a list of K finite numbers >= 0"),
    "data.crop_size": _SIDES,
    "data.ratio_range": ((lambda v: all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                          and 0 < v[0] <= v[1]), "[low, high] with 0 < low <= high"),
    "data.mean": ((lambda v: all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                                 for x in v)), "[r, g, b] of finite numbers (0..255 scale)"),
    "data.std": ((lambda v: all(isinstance(x, (int, float)) and not isinstance(x, bool) and _positive(x)
                                for x in v)), "[r, g, b] of finite numbers > 0 (0..255 scale)"),
    "data.batch_size": _count(1, 4096),
    "data.val_batch_size": _count(1, 4096),
    "data.num_workers": _count(0, 1024),
    "data.synthetic.num_classes": _count(2, 255, " (labels are 8-bit, 255 is ignore)"),
    "data.synthetic.modes_per_class": _count(1, 1000),
    "data.synthetic.image_size": _SIDES,
    "data.synthetic.num_train": _count(1, 10**6),
    "data.synthetic.num_val": _count(1, 10**6),
    "data.synthetic.seed": SEED,
    "train.seed": SEED,
    "train.iterations": _count(1, 10**9),
    "train.lr": _POSITIVE,
    "train.momentum": ((lambda v: 0 <= v < 1), "a number in [0, 1)"),
    "train.weight_decay": _NON_NEGATIVE,
    "train.poly_power": _NON_NEGATIVE,
    "train.device": (_device, "auto, cpu, cuda, cuda:N or mps"),
    "train.threads": ((lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
                      "null or an integer >= 1"),
    "train.log_interval": _count(),
    "train.eval_interval": _count(0),
    "train.checkpoint_interval": _count(),
    "train.keep_checkpoints": _count(),
    "eval.resize": ((lambda v: isinstance(v, list) and len(v) == 2 and _SIDES[0](v)),
                    f"null or [long, short] of integers in [1, {SIDE}]"),
    "eval.crop_size": _SIDES,
    "eval.stride": _SIDES,
    "eval.scales": ((lambda v: all(isinstance(x, (int, float)) and not isinstance(x, bool) and _positive(x)
                                   for x in v)), "a non-empty list of numbers > 0"),
    "eval.complexity_size": _SIDES,
    "eval.fps_images": _count(0),
    "eval.fps_warmup": _count(0),
    "eval.fps_max_s": _POSITIVE,
}


class SpecError(ValueError):
    """An invalid run spec: the message names the source, the key and what is valid."""


def did_you_mean(key: str, valid) -> str:
    """' (did you mean 'x'?)' for the closest of `valid`, or ''."""
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _merge(default: dict, given: dict, path: str, source: str) -> dict:
    out = copy.deepcopy(default)
    if not isinstance(given, dict):
        raise SpecError(f"{source}: '{path or 'spec'}' must be a mapping, got {type(given).__name__}")
    for key, value in given.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in default:
            raise SpecError(f"{source}: unknown key '{full}'{did_you_mean(str(key), default)}; "
                            f"valid keys: {', '.join(default)}")
        if isinstance(default[key], dict):
            out[key] = _merge(default[key], value, full, source)
        else:
            out[key] = check_value(full, value, source)
    return out


def _check_value(full: str, default, value, source: str):
    if full in CHOICES and value not in CHOICES[full]:
        raise SpecError(f"{source}: '{full}' is {value!r}{did_you_mean(str(value), CHOICES[full])}; "
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


def check_value(full: str, value, source: str = "<spec>"):
    """One field's value, type and range checked (floats given as ints become floats); SpecError names it."""
    default = get(DEFAULTS, full)
    value = _check_value(full, default, value, source)
    if value is not None and full in RULES:
        ok, valid = RULES[full]
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            raise SpecError(f"{source}: '{full}' is {value!r}; valid: {valid}")
    return value


def num_classes(fields: Mapping[str, Any]) -> int | None:
    """K of a spec's dataset, known without loading it; `fields` maps dotted paths to values."""
    if fields["data.dataset"] == "synthetic":
        return fields["data.synthetic.num_classes"]
    return NUM_CLASSES.get(fields["data.dataset"])


CROSS_FIELDS = ("data.dataset", "data.synthetic.num_classes", "model.class_weights", "data.root")


def check_spec(fields: Mapping[str, Any], source: str = "<spec>") -> None:
    """The checks that relate fields (CROSS_FIELDS) of a resolved spec; `fields` maps dotted paths to values."""
    weights, k, dataset = fields["model.class_weights"], num_classes(fields), fields["data.dataset"]
    if weights is not None and k is not None and len(weights) != k:
        raise SpecError(f"{source}: 'model.class_weights' has {len(weights)} values; valid: null or a list of "
                        f"K = {k} numbers (one per class of data.dataset {dataset!r})")
    if dataset in NEEDS_ROOT and not fields["data.root"]:
        raise SpecError(f"{source}: 'data.root' is not set; data.dataset {dataset!r} needs the folder that holds it")


def resolve(spec: dict | None = None, source: str = "<spec>") -> dict:
    """Return a full copy of `spec` with every default filled in; raise SpecError when invalid.
    Old key names are moved to their new place (with a notice)."""
    resolved = _merge(DEFAULTS, rename_keys(spec or {}, source), "", source)
    check_spec(flatten(resolved), source)
    return resolved


def load(path: str | Path) -> dict:
    """Read a YAML run spec and resolve it."""
    return resolve(read_yaml(path, "spec file", SpecError), source=str(path))


# ---- history: renamed keys and changed defaults ---------------------------------------------

_told: set[str] = set()


def notice(text: str) -> None:
    """A one-line notice on stderr, once per process."""
    if text not in _told:
        _told.add(text)
        print(f"notice: {text}", file=sys.stderr)


def new_name(dotted: str, source: str = "<spec>") -> str:
    """The current name of a spec path that may have been renamed (with a notice)."""
    for entry in HISTORY:
        if dotted in entry.get("renamed", {}):
            new = entry["renamed"][dotted]
            notice(f"{source}: '{dotted}' is now '{new}' (spec version {entry['version']}); "
                   f"write '{new}' to silence this")
            dotted = new
    return dotted


def rename_keys(spec: dict, source: str = "<spec>") -> dict:
    """A copy of a (partial) nested spec with old key names moved to their new place."""
    if not HISTORY or not isinstance(spec, dict):
        return spec
    out: dict = {}
    for path, value in flatten(spec).items():
        set_path(out, new_name(path, source), value)
    return out


def flatten(spec: dict, prefix: str = "") -> dict:
    """{dotted path: value} of a nested spec."""
    out = {}
    for key, value in spec.items():
        if isinstance(value, dict):  # a section: no field takes a mapping
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + str(key)] = value
    return out


def changed_defaults(since: int) -> dict[str, Any]:
    """{path: the default it had at spec version `since`} for every default changed after it."""
    old: dict[str, Any] = {}
    for entry in reversed(HISTORY):
        if entry["version"] > since:
            old.update(entry.get("defaults", {}))
    return old


def baseline() -> dict:
    """DEFAULTS with every changed default at its first value: what a key meant when it was added."""
    spec = copy.deepcopy(DEFAULTS)
    for path, value in changed_defaults(0).items():
        set_path(spec, path, copy.deepcopy(value))
    return spec


def parse_assignments(items: list[str], error: type[Exception] = SpecError) -> list[tuple[str, Any]]:
    """Command-line 'key.path=value' items -> [(key.path, value parsed as YAML)]."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise error(f"--set {item!r}: expected key.path=value, e.g. model.head=parametric")
        out.append((key.strip(), load_yaml(value)))
    return out


def set_path(spec: dict, dotted: str, value) -> dict:
    """spec['a']['b'] = value for 'a.b', making the sections that are missing; returns spec."""
    *parents, leaf = dotted.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return spec


_MISSING = object()


def get(spec: dict, dotted: str, default=_MISSING):
    """spec['a']['b'] for 'a.b' (`default` when the path does not exist)."""
    node = spec
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _MISSING:
                raise KeyError(dotted)
            return default
        node = node[part]
    return node
