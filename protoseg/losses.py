"""L = CE(upsampled logits) + ppc_weight PPC + ppd_weight PPD (+ aux_weight CE of the auxiliary head)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data.transforms import IGNORE_INDEX


def seg_cross_entropy(seg: torch.Tensor, labels: torch.Tensor, class_weights=None,
                      align_corners: bool = True) -> torch.Tensor:
    """Cross-entropy of logits upsampled (bilinear; align_corners True as the official code,
    False as mmseg) to the labels."""
    logits = F.interpolate(seg, size=labels.shape[-2:], mode="bilinear", align_corners=align_corners)
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=logits.dtype,
                                                                device=logits.device)
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE_INDEX)


def ppc_loss(proto_logits: torch.Tensor, proto_target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Pixel-prototype contrast: CE over all K*M cosine logits, target k*M + m, ignore -1."""
    return F.cross_entropy(proto_logits / temperature, proto_target, ignore_index=-1)


def ppd_loss(proto_logits: torch.Tensor, proto_target: torch.Tensor) -> torch.Tensor:
    """Pixel-prototype distance: mean over valid pixels of (1 - cos(pixel, its prototype))^2."""
    valid = proto_target >= 0
    cos = proto_logits.gather(1, proto_target.clamp(min=0)[:, None])[:, 0]
    return ((1 - cos).pow(2) * valid).sum() / valid.sum().clamp(min=1)


def total_loss(out: dict, labels: torch.Tensor, model_cfg: dict) -> tuple[torch.Tensor, dict]:
    """The training loss of one batch and its parts (as tensors, no host sync)."""
    parts = {"ce": seg_cross_entropy(out["seg"].float(), labels, model_cfg["class_weights"])}
    loss = parts["ce"]
    if "proto_logits" in out:
        logits, proto = out["proto_logits"].float(), model_cfg["prototype"]
        parts["ppc"] = ppc_loss(logits, out["proto_target"], proto["ppc_temperature"])
        parts["ppd"] = ppd_loss(logits, out["proto_target"])
        loss = loss + proto["ppc_weight"] * parts["ppc"] + proto["ppd_weight"] * parts["ppd"]
    if "aux_seg" in out:
        parts["aux"] = seg_cross_entropy(out["aux_seg"].float(), labels, model_cfg["class_weights"],
                                         align_corners=False)
        loss = loss + model_cfg["aux_weight"] * parts["aux"]
    return loss, parts
