"""Inference at the image's size: whole or sliding window, multi-scale and
flip by summing logits; and dataset-level evaluation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import metrics


def _logits(model, images: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(model(images)["seg"].float(), size=size, mode="bilinear", align_corners=True)


def _slide(model, images: torch.Tensor, num_classes: int, crop, stride) -> torch.Tensor:
    """mmseg-style sliding window: overlapping crops, logits averaged where they overlap."""
    b, _, h, w = images.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    rows = max(h - ch + stride[0] - 1, 0) // stride[0] + 1
    cols = max(w - cw + stride[1] - 1, 0) // stride[1] + 1
    out = images.new_zeros(b, num_classes, h, w)
    count = images.new_zeros(1, 1, h, w)
    for r in range(rows):
        for c in range(cols):
            y0 = min(r * stride[0], h - ch)
            x0 = min(c * stride[1], w - cw)
            out[:, :, y0:y0 + ch, x0:x0 + cw] += _logits(model, images[:, :, y0:y0 + ch, x0:x0 + cw], (ch, cw))
            count[:, :, y0:y0 + ch, x0:x0 + cw] += 1
    return out / count


@torch.no_grad()
def predict_logits(model, images: torch.Tensor, eval_cfg: dict, num_classes: int) -> torch.Tensor:
    """(B, K, H, W) logits at the input size, summed over eval.scales and, with eval.flip, flips."""
    size = images.shape[-2:]
    total = None
    for scale in eval_cfg["scales"]:
        scaled = images if scale == 1.0 else F.interpolate(
            images, scale_factor=scale, mode="bilinear", align_corners=True)
        for flip in ([False, True] if eval_cfg["flip"] else [False]):
            x = scaled.flip(-1) if flip else scaled
            if eval_cfg["mode"] == "slide":
                logits = _slide(model, x, num_classes, eval_cfg["crop_size"], eval_cfg["stride"])
            else:
                logits = _logits(model, x, x.shape[-2:])
            logits = F.interpolate(logits.flip(-1) if flip else logits, size=size, mode="bilinear",
                                   align_corners=True)
            total = logits if total is None else total + logits
    return total


@torch.no_grad()
def evaluate(model, loader, eval_cfg: dict, num_classes: int, class_names, device) -> dict:
    """Dataset-level confusion matrix over `loader`, then mIoU / mAcc / aAcc / per-class."""
    was_training = model.training
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    try:
        for images, labels in loader:
            pred = predict_logits(model, images.to(device), eval_cfg, num_classes).argmax(dim=1).cpu()
            conf += metrics.confusion(pred, labels, num_classes)
    finally:
        model.train(was_training)
    return {**metrics.summarise(conf.numpy(), class_names), "confusion": conf.tolist()}
