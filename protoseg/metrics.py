"""Dataset-level confusion matrix and the IoU family of metrics."""
from __future__ import annotations

import numpy as np
import torch


def confusion(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts, rows = ground truth, columns = prediction; ignore 255."""
    valid = (label >= 0) & (label < num_classes)
    idx = label[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def summarise(conf, class_names: list[str] | None = None) -> dict:
    """mIoU, mAcc, aAcc and per-class IoU / Acc (percent) from a confusion matrix.

    IoU = TP / (TP + FP + FN); a class absent from both ground truth and
    prediction has IoU NaN and is left out of the means (nanmean)."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    gt, pred = conf.sum(axis=1), conf.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (gt + pred - tp)
        acc = tp / gt
    names = class_names or [str(i) for i in range(len(tp))]
    nan_to_none = lambda v: None if np.isnan(v) else round(float(v) * 100, 4)  # noqa: E731
    return {
        "mIoU": nan_to_none(np.nanmean(iou)) if np.isfinite(iou).any() else None,
        "mAcc": nan_to_none(np.nanmean(acc)) if np.isfinite(acc).any() else None,
        "aAcc": nan_to_none(tp.sum() / conf.sum()) if conf.sum() else None,
        "per_class_iou": {n: nan_to_none(v) for n, v in zip(names, iou)},
        "per_class_acc": {n: nan_to_none(v) for n, v in zip(names, acc)},
    }
