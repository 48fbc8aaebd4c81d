"""Parameters, MACs and FLOPs of a segmentor at a stated input size, in eval mode.

Papers' "GFLOPs" are multiply-accumulates (the mmcv / mmengine / fvcore
convention): `macs` here, counted by mmengine.analysis. torch's own
flop_counter counts 2 per multiply-add: `flops` here. Both are stored.
Both counters see `scaled_dot_product_attention` (transformers' MiT runs
attention through it) as zero on CPU: it is given a handle in each, the two
matrix products q k^T and a v (softmax and scaling are not counted, as for
an eager attention's matmuls).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from . import config
from .io import Guard, atomic_write_json, refuse_link


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
    """Learnable = parameters with requires_grad, of the model as it infers; total adds the rest and the
    buffers that are model state, such as the prototypes (BN statistics excluded). `with_aux`: the
    learnable parameters of the model as trained, the auxiliary head included (the FCN row of the
    ProtoSeg paper counts it)."""
    params = _inference_params(model)
    learnable = sum(p.numel() for p in params if p.requires_grad)
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    state_buffers = sum(b.numel() for name, b in model.named_buffers() if name.endswith("prototypes"))
    return {"params_learnable": learnable, "params_total": learnable + frozen + state_buffers,
            "params_learnable_with_aux": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def _sdpa_macs(inputs, outputs) -> int:
    """mmengine's handle of aten::scaled_dot_product_attention: q (..., L, E), k (..., S, E), v (..., S, Ev)
    -> L S E for q k^T plus L S Ev for a v, per batch and head."""
    from mmengine.analysis.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """torch's formula for its GPU attention kernels (2 per multiply-add), for the CPU kernel it lacks one for."""
    return sdpa_flop_count(query, key, value)


_CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


@contextlib.contextmanager
def _checked(model: nn.Module, check: Callable[[], None] | None):
    """`check()` before the forward of every module of `model`: an exception it raises (a stop) ends a
    count of minutes within one module's time. Nothing when `check` is None."""
    handles = [] if check is None else [m.register_forward_pre_hook(lambda *_: check()) for m in model.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def count_macs_flops(model: nn.Module, size: tuple[int, int], check: Callable[[], None] | None = None) -> dict:
    """MACs (mmengine) and FLOPs (torch.utils.flop_counter) of one (1, 3, H, W) image. `check` is
    called before each module's forward (and may raise to stop the count)."""
    from mmengine.analysis import FlopAnalyzer

    was_training = model.training
    model.eval()
    try:
        if check is not None:
            check()
        device = next(model.parameters()).device
        image = torch.zeros(1, 3, *size, device=device)
        wrapped = _SegOnly(model)
        analyzer = FlopAnalyzer(wrapped, (image,))
        analyzer.set_op_handle(**{"aten::scaled_dot_product_attention": _sdpa_macs})
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with contextlib.redirect_stdout(io.StringIO()), _checked(model, check):
            macs = int(analyzer.total())
        counter = FlopCounterMode(display=False, custom_mapping=_CPU_SDPA)
        with counter, _checked(model, check):
            wrapped(image)
        flops = int(counter.get_total_flops())
    finally:
        model.train(was_training)
    return {"macs": macs, "flops": flops, "complexity_input": list(size),
            "gflops_convention": "macs (mmengine: 1 multiply-add = 1 FLOP); flops = torch.utils.flop_counter (2 per multiply-add)"}


def measure(model: nn.Module, size: tuple[int, int], check: Callable[[], None] | None = None) -> dict:
    return {**count_params(model), **count_macs_flops(model, size, check)}


# bumped when what is counted changes (2: attention counted, params_learnable_with_aux), so no cache holds old counts
COUNTS_VERSION = 2
# the packages that build the models (timm, transformers) and count them (torch, mmengine): another
# version of one may build or count another graph, so their versions are part of a cache entry's key
KEY_DISTRIBUTIONS = ("torch", "timm", "transformers", "mmengine")
# the model fields (first names) a cache key was made of when COUNTS_VERSION was last bumped: a field added
# since enters a key only when set off its default, so adding a field leaves every cache entry valid
KEY_FIELDS = frozenset({"aux_head", "backbone", "decoder", "decoder_channels", "decoder_kernel", "embed_dim", "head",
                        "mask_norm", "norm", "num_prototypes", "output_stride", "proj_norm"})


def cache_key(model_cfg: dict, num_classes: int, size: tuple[int, int]) -> str:
    """The cache entry of an architecture: every model field but those tagged TRAINING (the resolved spec's
    model section, so every field is there with its value; renamed fields under their first names; one
    added since KEY_FIELDS only off its default), the class count, the input size, what is counted
    (COUNTS_VERSION) and the versions of KEY_DISTRIBUTIONS. Distinct architectures or sizes never share an
    entry."""
    from .provenance import version

    first, arch = config.first_names(), {}
    for path, value in config.flatten(model_cfg, "model.").items():
        name, field = first.get(path, path).removeprefix("model."), config.FIELDS[path]
        if config.TRAINING not in field.tags and (name in KEY_FIELDS or value != field.default):
            arch[name] = value
    versions = {name: version(name) for name in KEY_DISTRIBUTIONS}
    text = json.dumps([COUNTS_VERSION, arch, num_classes, list(size), versions], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _entry(cache: Path, model_cfg: dict, num_classes: int, size: tuple[int, int]) -> Path:
    refuse_link(cache, "complexity cache folder")
    return Path(cache) / f"{cache_key(model_cfg, num_classes, size)}.json"


def lookup(model_cfg: dict, num_classes: int, size: tuple[int, int], cache: Path | None) -> dict | None:
    """The counts `cache` holds for this architecture, class count and size; None when it holds none
    (or a garbled entry). An entry that is a symbolic link is refused (io.LinkRefused), never read."""
    if cache is None:
        return None
    path = _entry(Path(cache), model_cfg, num_classes, size)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            refuse_link(path, "complexity cache file")
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            counts = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return counts if isinstance(counts, dict) and {"macs", "flops", "params_total"} <= counts.keys() else None


def measure_cached(model: nn.Module, model_cfg: dict, num_classes: int, size: tuple[int, int],
                   cache: Path | None, guard: Guard = contextlib.nullcontext,
                   check: Callable[[], None] | None = None) -> dict:
    """`measure`, remembered in `cache` (a folder; the harness gives one per results folder) per
    architecture, class count and input size (cache_key): counting a large model at 2048x1024 costs
    minutes on a CPU, and a results folder has many runs of one architecture. The entry is written
    atomically inside `guard()`; a cache folder or entry that is a symbolic link is refused
    (io.LinkRefused). `check`: see count_macs_flops."""
    counts = lookup(model_cfg, num_classes, size, cache)
    if counts is not None:
        return counts
    counts = measure(model, size, check)
    if cache is not None:
        refuse_link(cache, "complexity cache folder")
        Path(cache).mkdir(parents=True, exist_ok=True)
        atomic_write_json(_entry(Path(cache), model_cfg, num_classes, size), counts, guard)
    return counts
