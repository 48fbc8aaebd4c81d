"""Prototype averaging under DDP: two real CPU processes over gloo."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from protoseg.models.prototypes import assign, average_over_ranks, momentum_update, sinkhorn_plan

WORLD = 2
K, M, D = 7, 4, 32
GAMMA = 0.5  # a large step, so that the two ranks' updates differ visibly


def shared_prototypes() -> torch.Tensor:
    """The same starting prototypes on every rank (DDP broadcasts buffers)."""
    return F.normalize(torch.randn(K, M, D, generator=torch.Generator().manual_seed(123)), dim=-1)


def rank_data(rank: int):
    """Each rank's own pixels: different classes present, some ignored."""
    g = torch.Generator().manual_seed(1000 + rank)
    n = 600
    labels = torch.randint(0, K, (n,), generator=g)
    labels[labels == (rank + 2)] = -1  # a class absent on this rank only
    labels[torch.rand(n, generator=g) < 0.05] = -1
    emb = F.normalize(torch.randn(n, D, generator=g), dim=-1)
    correct = (torch.rand(n, generator=g) < 0.7).float()
    return emb, labels, correct


def local_update(rank: int) -> torch.Tensor:
    protos = shared_prototypes()
    emb, labels, correct = rank_data(rank)
    sim = (emb @ protos.reshape(K * M, D).t()).reshape(-1, K, M)
    own = sim.gather(1, labels.clamp(min=0)[:, None, None].expand(-1, 1, M))[:, 0]
    plan = sinkhorn_plan(own, labels, K)
    return momentum_update(protos, emb, labels, assign(plan, "argmax"), correct, GAMMA)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        new = local_update(rank)
        before = new.clone()
        averaged = average_over_ranks(new)
        assert torch.equal(new, before), "average_over_ranks modified its input"
        torch.save(averaged, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_average_over_ranks_is_identity_without_process_group():
    assert not dist.is_initialized()
    p = shared_prototypes()
    assert torch.equal(average_over_ranks(p), p)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ddp_ranks_end_with_the_mean_of_their_updates(tmp_path):
    init_file = tmp_path / "pg_init"
    mp.spawn(_worker, args=(str(init_file), str(tmp_path)), nprocs=WORLD, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    singles = [local_update(r) for r in range(WORLD)]
    assert (singles[0] - singles[1]).abs().max() > 0.1  # the ranks really did different updates
    expected = torch.stack(singles).mean(dim=0)

    assert torch.equal(got[0], got[1])  # identical on every rank
    torch.testing.assert_close(got[0], expected, atol=1e-6, rtol=0)
    assert got[0].shape == (K, M, D)
