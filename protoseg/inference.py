"""Inference at the image's size: whole or sliding window, multi-scale and
flip by summing logits; and dataset-level evaluation, with the prototype
diagnostics of a nonparametric head."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import diagnostics, metrics


def _logits(model, images: torch.Tensor, size, wins=None, labels=None) -> torch.Tensor:
    """Logits resized to `size`; with `wins`, adds the prototype wins over `labels` (the pixels of `images`)."""
    out = model(images, winners=wins is not None)
    if wins is not None:
        winners = out["winners"]
        wins += diagnostics.win_counts(winners, _nearest(labels, winners.shape[-2:]), wins.shape[1])
    return F.interpolate(out["seg"].float(), size=size, mode="bilinear", align_corners=True)


def _slide(model, images: torch.Tensor, num_classes: int, crop, stride, wins=None, labels=None) -> torch.Tensor:
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
            ys, xs = slice(y0, y0 + ch), slice(x0, x0 + cw)
            out[:, :, ys, xs] += _logits(model, images[:, :, ys, xs], (ch, cw), wins,
                                         None if labels is None else labels[:, ys, xs])
            count[:, :, ys, xs] += 1
    return out / count


def _nearest(labels: torch.Tensor, size) -> torch.Tensor:
    """Labels resized to `size` as the training's prototype targets are: nearest neighbour."""
    if labels.shape[-2:] == size:
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def rescaled_size(size, resize) -> tuple[int, int]:
    """mmseg's Resize(scale=(long, short), keep_ratio=True): the image scaled to the largest size that fits
    a long x short box (ADE20K's [2048, 512]: short side 512 unless the long side would pass 2048)."""
    (h, w), (long, short) = size, resize
    factor = min(long / max(h, w), short / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


@torch.no_grad()
def predict_logits(model, images: torch.Tensor, eval_cfg: dict, num_classes: int,
                   labels: torch.Tensor | None = None, wins: torch.Tensor | None = None) -> torch.Tensor:
    """(B, K, H, W) logits at the input size, summed over eval.scales and, with eval.flip, flips; with
    eval.resize, inference runs on the image rescaled into that box and the logits come back to its size.

    With `wins` ((K, M) int64) and `labels` (B, H, W), adds to `wins` the pixels each prototype wins,
    counted on one pass only: the unflipped one at the scale nearest 1.0, labels nearest-resized to it.
    In sliding inference each window counts its own pixels (a pixel where windows overlap counts in each).
    """
    size = images.shape[-2:]
    if eval_cfg["resize"]:
        images = F.interpolate(images, size=rescaled_size(size, eval_cfg["resize"]), mode="bilinear",
                               align_corners=False)
    counted = min(eval_cfg["scales"], key=lambda s: abs(s - 1.0)) if wins is not None else None
    total = None
    for scale in eval_cfg["scales"]:
        scaled = images if scale == 1.0 else F.interpolate(
            images, scale_factor=scale, mode="bilinear", align_corners=True)
        for flip in ([False, True] if eval_cfg["flip"] else [False]):
            x = scaled.flip(-1) if flip else scaled
            probe = (wins, _nearest(labels, x.shape[-2:])) if scale == counted and not flip else (None, None)
            if eval_cfg["mode"] == "slide":
                logits = _slide(model, x, num_classes, eval_cfg["crop_size"], eval_cfg["stride"], *probe)
            else:
                logits = _logits(model, x, x.shape[-2:], *probe)
            logits = F.interpolate(logits.flip(-1) if flip else logits, size=size, mode="bilinear",
                                   align_corners=True)
            total = logits if total is None else total + logits
    return total


@torch.no_grad()
def evaluate(model, loader, eval_cfg: dict, num_classes: int, class_names, device) -> dict:
    """Dataset-level confusion matrix over `loader`, then mIoU / mAcc / aAcc / per-class; for a model
    with a prototype head also its diagnostics (protoseg/diagnostics.py), from the same pass."""
    was_training = model.training
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    prototypes = getattr(getattr(model, "head", None), "prototypes", None)
    wins = None if prototypes is None else torch.zeros(prototypes.shape[:2], dtype=torch.int64, device=device)
    try:
        for images, labels in loader:
            logits = predict_logits(model, images.to(device), eval_cfg, num_classes,
                                    None if wins is None else labels.to(device), wins)
            conf += metrics.confusion(logits.argmax(dim=1).cpu(), labels, num_classes)
    finally:
        model.train(was_training)
    result = {**metrics.summarise(conf.numpy(), class_names), "confusion": conf.tolist()}
    if wins is not None:
        result.update(diagnostics.summary(prototypes, wins, class_names))
    return result
