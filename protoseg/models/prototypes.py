"""Prototype learning of ProtoSeg, vectorised over all classes at once.

The official code loops over classes in Python, with several host-device
synchronisations per class. Here every per-class quantity is a segment sum
over the pixels of that class (`index_add_`), so one step is a fixed number
of tensor ops whatever K is, and nothing waits on the device.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


@torch.no_grad()
def sinkhorn_plan(sim: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Per-class Sinkhorn-Knopp transport plans, all classes in one pass.

    sim: (N, M) cosine similarity of each pixel to the M prototypes of its own
    class; labels: (N,) class ids, negative = ignore. Returns (N, M): for each
    class, the plan of the official `distributed_sinkhorn` run on that class's
    pixels alone (equipartition over the M prototypes, rows sum to 1); rows of
    ignored pixels are 0.
    """
    n, m = sim.shape
    valid = labels >= 0
    cls = labels.clamp(min=0)
    # The official code divides by the plan's total first; any per-class scale
    # cancels in the next row normalisation, so it is left out.
    q = torch.exp(sim.float() / epsilon) * valid.unsqueeze(1)
    for _ in range(iterations):
        # Prototype marginals: each prototype of class k gets 1/M of the mass.
        mass = q.new_zeros(num_classes, m).index_add_(0, cls, q)
        q = q / mass.clamp(min=torch.finfo(q.dtype).tiny)[cls]
        # Pixel marginals: each pixel's row sums to 1 (the official code's
        # 1/M and 1/B factors cancel here and in its final `*= B`).
        q = q / q.sum(dim=1, keepdim=True).clamp(min=torch.finfo(q.dtype).tiny)
    return q * valid.unsqueeze(1)


@torch.no_grad()
def assign(plan: torch.Tensor, mode: str = "gumbel", generator: torch.Generator | None = None) -> torch.Tensor:
    """Prototype index within the class for each pixel, from its plan row.

    `argmax` takes the plan's best prototype. `gumbel` is the official update's
    `F.gumbel_softmax(plan, tau=0.5, hard=True)`: it treats the plan's
    probabilities as logits, so argmax(plan + Gumbel noise) is close to a
    uniform sample (the temperature does not change a hard sample's argmax).
    """
    if mode == "argmax":
        return plan.argmax(dim=1)
    if mode != "gumbel":
        raise ValueError(f"update_assignment is {mode!r}; valid: gumbel, argmax")
    gumbel = -torch.empty_like(plan).exponential_(generator=generator).log()  # as F.gumbel_softmax draws it
    return (plan + gumbel).argmax(dim=1)


@torch.no_grad()
def momentum_update(prototypes: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor,
                    assignment: torch.Tensor, weights: torch.Tensor, gamma: float) -> torch.Tensor:
    """Momentum update of the prototypes from their weighted assigned pixels.

    prototypes (K, M, D); embeddings (N, D) unit vectors; labels (N,) class
    ids (negative = ignore); assignment (N,) prototype index within the class;
    weights (N,) bool (the pixels that count: the official update's correctly
    predicted ones) or real-valued. Every prototype with positive total weight
    becomes gamma p + (1 - gamma) l2norm(sum w e); then all prototypes are
    L2-normalised. Returns a new (K, M, D) tensor.
    """
    k, m, d = prototypes.shape
    counts = (labels >= 0) & (weights > 0)
    # Pixels that do not count go to a spare row k*m, dropped afterwards:
    # cheaper than masking, and no data-dependent shapes (no host sync).
    slot = torch.where(counts, labels.clamp(min=0) * m + assignment, k * m)
    if weights.dtype != torch.bool:  # real weights need the (N, D) product; a mask does not
        embeddings = embeddings * weights.to(embeddings.dtype).unsqueeze(1)
    sums = embeddings.new_zeros(k * m + 1, d).index_add_(0, slot, embeddings)[:-1]
    hits = embeddings.new_zeros(k * m + 1).index_add_(0, slot, counts.to(embeddings.dtype))[:-1]
    old = prototypes.reshape(k * m, d).to(sums.dtype)
    moved = gamma * old + (1.0 - gamma) * F.normalize(sums, p=2, dim=1)
    new = torch.where((hits > 0).unsqueeze(1), moved, old)
    return F.normalize(new, p=2, dim=1).reshape(k, m, d).to(prototypes.dtype)


def average_over_ranks(prototypes: torch.Tensor) -> torch.Tensor:
    """Mean of the prototypes over torch.distributed ranks (official behaviour); identity otherwise."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        prototypes = prototypes.clone()
        dist.all_reduce(prototypes)
        prototypes /= dist.get_world_size()
    return prototypes
