"""Prototype diagnostics of a nonparametric head, recorded at each evaluation.

- diversity: mean pairwise cosine similarity among a class's M prototypes
  (off-diagonal pairs); 1.0 = all identical (collapsed), 0.0 = orthogonal.
  M = 1 has no pairs: None.
- prototypes used: how many of a class's M prototypes are the nearest one
  (argmax of that class's M cosine similarities) to at least one validation
  pixel of that class (ignore label left out).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EVAL_KEYS = ("prototype_diversity", "prototypes_used")  # the means, recorded at every evaluation


def diversity(prototypes: torch.Tensor) -> torch.Tensor | None:
    """(K,) mean off-diagonal cosine similarity of each class's M prototypes; None when M = 1."""
    m = prototypes.shape[1]
    if m < 2:
        return None
    unit = F.normalize(prototypes.double(), p=2, dim=-1)
    gram = unit @ unit.transpose(1, 2)  # (K, M, M)
    return (gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)) / (m * (m - 1))


def win_counts(winners: torch.Tensor, labels: torch.Tensor, num_prototypes: int) -> torch.Tensor:
    """(K, M) int64: the pixels each prototype wins among the pixels of its own class.

    winners (B, K, h, w): index of each class's nearest prototype per pixel; labels (B, h, w) on the same
    grid. Labels outside 0..K-1 (the ignore label 255) are left out."""
    k = winners.shape[1]
    valid = (labels >= 0) & (labels < k)
    own = labels.clamp(0, k - 1)
    won = winners.gather(1, own[:, None])[:, 0]
    return torch.bincount((own * num_prototypes + won)[valid], minlength=k * num_prototypes).reshape(k, -1)


def summary(prototypes: torch.Tensor, wins: torch.Tensor, class_names: list[str]) -> dict:
    """The diagnostics of one evaluation: means and per class (keyed by class name).

    A class without validation pixels has no used count (None) and is left out of the mean, as a class
    absent from the data is left out of mIoU."""
    names = class_names or [str(i) for i in range(len(wins))]
    per_class = diversity(prototypes)
    similar = [None] * len(names) if per_class is None else [round(v, 6) for v in per_class.tolist()]
    wins = wins.cpu()
    present = wins.sum(dim=1) > 0
    used = (wins > 0).sum(dim=1)
    return {
        "prototype_diversity": None if per_class is None else round(per_class.mean().item(), 6),
        "prototype_diversity_per_class": dict(zip(names, similar)),
        "prototypes_used": round(used[present].double().mean().item(), 4) if present.any() else None,
        "prototypes_used_per_class": {n: int(u) if p else None
                                      for n, u, p in zip(names, used.tolist(), present.tolist())},
        "prototypes_per_class": prototypes.shape[1],
    }


def describe(result: dict) -> str:
    """', prototype diversity .. , prototypes used ../M' for a log line; '' without prototype diagnostics."""
    if "prototypes_used" not in result:
        return ""
    m = result["prototypes_per_class"]
    used = ", ".join("-" if u is None else str(u) for u in result["prototypes_used_per_class"].values())
    diversity_text = "n/a (M=1)" if result["prototype_diversity"] is None else f"{result['prototype_diversity']:.4f}"
    return (f", prototype diversity {diversity_text}, prototypes used {result['prototypes_used']} of {m} "
            f"per class ({used})")
