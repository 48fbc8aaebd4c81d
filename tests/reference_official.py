"""Reference: ProtoSeg's prototype step written like the official code.

A deliberately plain transcription of tfzhou/ProtoSeg
(`lib/models/modules/sinkhorn.py: distributed_sinkhorn` and
`lib/models/nets/hrnet.py: HRNet_W48_Proto.prototype_learning`), with its
per-class Python loop, kept as the ground truth that the vectorised
`protoseg.models.prototypes` is compared against (tests and benchmark).

Only two things differ from the official code, both for testability:
- the hard assignment used by the update is a parameter (`assignment_fn`);
  the official code uses `F.gumbel_softmax(plan, tau=0.5, hard=True)`, the
  comparison tests use the argmax so that both sides are deterministic;
- the plan of every pixel is returned as well (the official code keeps it
  local to the loop).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


@torch.no_grad()
def official_sinkhorn(out: torch.Tensor, sinkhorn_iterations: int = 3, epsilon: float = 0.05):
    """`distributed_sinkhorn` of the official code, before its gumbel step.

    out: (B, K) similarities of B pixels to the K prototypes of one class.
    Returns (plan (B, K), indexs = plan.argmax(dim=1)).
    """
    L = torch.exp(out / epsilon).t()  # K x B
    B = L.shape[1]
    K = L.shape[0]

    # make the matrix sums to 1
    sum_L = torch.sum(L)
    L /= sum_L

    for _ in range(sinkhorn_iterations):
        L /= torch.sum(L, dim=1, keepdim=True)
        L /= K

        L /= torch.sum(L, dim=0, keepdim=True)
        L /= B

    L *= B
    L = L.t()

    indexs = torch.argmax(L, dim=1)
    # official: L = F.gumbel_softmax(L, tau=0.5, hard=True)
    return L, indexs


def argmax_assignment(plan: torch.Tensor) -> torch.Tensor:
    """Deterministic stand-in for the official gumbel step: the plan's argmax."""
    return plan.argmax(dim=1)


def official_gumbel_assignment(plan: torch.Tensor) -> torch.Tensor:
    """The official update's assignment, as an index (uses the global RNG)."""
    return F.gumbel_softmax(plan, tau=0.5, hard=True).argmax(dim=1)


def _momentum_update(old_value, new_value, momentum):
    return old_value * momentum + new_value * (1 - momentum)


@torch.no_grad()
def official_prototype_step(prototypes: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor,
                            sim_all: torch.Tensor, correct: torch.Tensor, gamma: float, num_classes: int,
                            assignment_fn: Callable[[torch.Tensor], torch.Tensor] = argmax_assignment,
                            sinkhorn_iterations: int = 3, epsilon: float = 0.05):
    """`prototype_learning` of the official code, per-class loop and all.

    prototypes (K, M, D); embeddings `_c` (N, D); labels `gt_seg` (N,) with
    negative = ignore; sim_all `masks` (N, M, K) =
    einsum('nd,kmd->nmk', embeddings, prototypes); correct (N,) the official
    `mask = (gt_seg == pred_seg)` (bool or 0/1).

    Returns (new prototypes (K, M, D), plan (N, M) assembled from the
    per-class plans with zero rows for ignored pixels, proto_target (N,) long
    with -1 for ignored pixels).
    """
    _c, gt_seg, masks = embeddings, labels, sim_all
    num_prototype = prototypes.shape[1]
    mask = correct.to(_c.dtype)

    proto_target = torch.full_like(gt_seg, -1, dtype=torch.long)
    plan_all = _c.new_zeros(_c.shape[0], num_prototype)

    # clustering for each class
    protos = prototypes.clone()
    for k in range(num_classes):
        init_q = masks[..., k]
        init_q = init_q[gt_seg == k, ...]
        if init_q.shape[0] == 0:
            continue

        plan, indexs = official_sinkhorn(init_q, sinkhorn_iterations, epsilon)
        plan_all[gt_seg == k] = plan
        q = F.one_hot(assignment_fn(plan), num_prototype).to(plan.dtype)

        m_k = mask[gt_seg == k]
        c_k = _c[gt_seg == k, ...]

        m_k_tile = m_k.unsqueeze(1).expand(-1, num_prototype)  # repeat(m_k, 'n -> n tile')
        m_q = q * m_k_tile  # n x num_prototype

        c_k_tile = m_k.unsqueeze(1).expand(-1, c_k.shape[-1])
        c_q = c_k * c_k_tile  # n x embedding_dim

        f = m_q.transpose(0, 1) @ c_q  # num_prototype x embedding_dim

        n = torch.sum(m_q, dim=0)

        if torch.sum(n) > 0:
            f = F.normalize(f, p=2, dim=-1)

            new_value = _momentum_update(old_value=protos[k, n != 0, :], new_value=f[n != 0, :],
                                         momentum=gamma)
            protos[k, n != 0, :] = new_value

        proto_target[gt_seg == k] = indexs + (num_prototype * k)

    protos = F.normalize(protos, p=2, dim=-1)  # l2_normalize
    return protos, plan_all, proto_target
