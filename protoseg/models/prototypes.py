"""Prototype learning of ProtoSeg, vectorised over all classes at once.

The official code loops over classes in Python, with several host-device
synchronisations per class. Here every per-class quantity is a segment sum
over the pixels of that class (or of that prototype), so one step is a fixed
number of tensor ops whatever K is, and nothing waits on the device.

Segment sums (`_segment_summer`): on the CPU, the pixels are sorted by
segment once and each segment's run is summed by `F.embedding_bag` (weighted
by `per_sample_weights`), ~5x faster than `index_add_` there; real weights
cost no (N, D) product, and the pixels that do not count, in a spare segment
that sorts last, past the last bag, are never read. On other devices
`index_add_` (atomic adds on CUDA) is used: `embedding_bag`'s CUDA kernel
sums each bag serially.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

# device types whose segment sums go through a sort and `embedding_bag`
_SORTED_SEGMENT_DEVICES = ("cpu",)


def _segment_summer(segment: torch.Tensor, num_segments: int) -> Callable[..., torch.Tensor]:
    """`sum(x, w=None)` -> (num_segments, C): for each segment s, the sum of
    w[i] x[i] over the rows i with segment[i] == s. Rows with segment[i] ==
    num_segments are dropped, but must have x[i] = 0 or w[i] = 0 (some
    `embedding_bag` kernels add them to the last bag). The sort, where there
    is one, is done once here for every call of `sum`."""
    if segment.device.type in _SORTED_SEGMENT_DEVICES:
        segment, order = segment.int().sort()  # int32 keys sort ~1.4x faster
        starts = torch.searchsorted(segment, torch.arange(num_segments + 1, device=segment.device))

        def segment_sum(x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
            return F.embedding_bag(order, x, starts, mode="sum", include_last_offset=True,
                                   per_sample_weights=None if w is None else w[order])
    else:
        def segment_sum(x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
            if w is not None:
                x = x * w.unsqueeze(1)
            return x.new_zeros(num_segments + 1, x.shape[1]).index_add_(0, segment, x)[:-1]
    return segment_sum


def _normalise_(x: torch.Tensor, norm: torch.Tensor | None = None) -> torch.Tensor:
    """In-place `F.normalize(x, p=2, dim=1)`, given x's row norms or not."""
    norm = x.norm(p=2, dim=1, keepdim=True) if norm is None else norm
    return x.div_(norm.clamp(min=1e-12))


def own_class_similarity(sim: torch.Tensor, labels: torch.Tensor, num_prototypes: int) -> torch.Tensor:
    """(N, M) similarity of each pixel to the M prototypes of its own class
    (class 0 for ignored pixels), from sim (N, K*M), the similarity to all
    prototypes: one contiguous row of M per pixel, ~3x cheaper than a gather."""
    n = sim.shape[0]
    k = sim.shape[1] // num_prototypes
    rows = torch.arange(n, device=sim.device) * k + labels.clamp(min=0)
    return sim.reshape(n * k, num_prototypes).index_select(0, rows)


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
    valid = labels >= 0
    cls = labels.clamp(min=0)
    class_sum = _segment_summer(torch.where(valid, labels, num_classes), num_classes)
    # The official code divides by the plan's total first; any per-class scale
    # cancels in the next row normalisation, so it is left out.
    q = sim.float().div(epsilon).exp_().masked_fill_(~valid.unsqueeze(1), 0)
    tiny = torch.finfo(q.dtype).tiny
    for _ in range(iterations):
        # Prototype marginals: each prototype of class k gets 1/M of the mass.
        q.div_(class_sum(q).clamp_(min=tiny).index_select(0, cls))
        # Pixel marginals: each pixel's row sums to 1 (the official code's
        # 1/M and 1/B factors cancel here and in its final `*= B`).
        q.div_(q.sum(dim=1, keepdim=True).clamp_(min=tiny))
    return q


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
    predicted ones) or real-valued >= 0. Every prototype with assigned pixels
    of positive weight becomes gamma p + (1 - gamma) l2norm(sum w^2 e): the
    official code multiplies both the one-hot assignment and the embeddings
    by its mask, so a real weight counts squared. Then all prototypes are
    L2-normalised. Returns a new (K, M, D) tensor.
    """
    k, m, d = prototypes.shape
    w = torch.where((labels >= 0) & (weights > 0), weights.to(embeddings.dtype), 0)
    slot = torch.where(w > 0, labels * m + assignment, k * m)  # pixels that do not count: dropped
    sums = _segment_summer(slot, k * m)(embeddings, w * w)
    norm = sums.norm(p=2, dim=1, keepdim=True)
    # lerp(new, old, g) = g old + (1 - g) new; g = 1 keeps a prototype without pixels as it is
    g = torch.where(norm > 0, gamma, 1.0).to(norm.dtype)
    new = _normalise_(sums, norm).lerp_(prototypes.reshape(k * m, d).to(sums.dtype), g)
    return _normalise_(new).reshape(k, m, d).to(prototypes.dtype)


def average_over_ranks(prototypes: torch.Tensor) -> torch.Tensor:
    """Mean of the prototypes over torch.distributed ranks (official behaviour); identity otherwise."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        prototypes = prototypes.clone()
        dist.all_reduce(prototypes)
        prototypes /= dist.get_world_size()
    return prototypes
