"""Environment fixes applied before timm / torchvision are imported."""
from __future__ import annotations

import glob
import importlib.util
import os

_done = False


def prepare_torchvision() -> None:
    """Make `import torchvision` (so `import timm`) work, and keep hubs offline.

    A CUDA build of torchvision beside a CPU torch cannot load its compiled
    ops, and its Python side then fails on `torchvision::nms`. Registering the
    two schemas it looks up is enough for the Python parts timm uses. Applied
    only when the compiled ops really fail to load.
    """
    global _done
    if _done:
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is not None and not _torchvision_ops_load(spec):
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        globals()["_shim_library"] = lib  # the definitions live as long as this object
    _done = True


def _torchvision_ops_load(spec) -> bool:
    """True when torchvision's compiled extension loads into this torch."""
    import torch

    folder = os.path.dirname(spec.origin)
    libs = glob.glob(os.path.join(folder, "_C*.so")) + glob.glob(os.path.join(folder, "_C*.pyd"))
    if not libs:
        return False
    try:
        torch.ops.load_library(libs[0])
    except (OSError, RuntimeError):
        return False
    return hasattr(torch.ops.torchvision, "nms")
