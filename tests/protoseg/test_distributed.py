"""DDP with two real CPU processes over gloo: prototype averaging, and
engine.run started as two ranks through the torchrun environment variables."""
from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import free_port, tiny_spec
from protoseg import checkpoint, engine, optim
from protoseg.data.sampler import TrainBatches
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


# --- engine.run as two CPU processes (gloo), started through the torchrun environment variables

def test_the_ranks_slices_make_up_the_global_batch():
    single = list(TrainBatches(10, 4, seed=3, start=0, end=6))
    ranks = [list(TrainBatches(10, 4, seed=3, start=0, end=6, rank=r, world=WORLD)) for r in range(WORLD)]
    for it, batch in enumerate(single):
        assert [len(r[it]) for r in ranks] == [4 // WORLD] * WORLD
        assert sorted(sum((r[it] for r in ranks), [])) == sorted(batch)


def _record_writes(root: str, into: list) -> None:
    """Note every file this process creates, writes, renames or deletes under `root`."""
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event, args):
        opened = event == "open" and isinstance(args[0], (str, os.PathLike)) and args[2] & writing
        if (opened or event in ("os.rename", "os.remove", "os.mkdir")) and str(args[0]).startswith(root):
            into.append((event, str(args[0])))

    sys.addaudithook(hook)


def _engine_worker(rank: int, jobs: list, runs_root: str, out_dir: str) -> None:
    """Rank `rank`: engine.run for each job in turn; its outcome goes to out_dir/<job>.rank<rank>.json."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1")
    written = []
    if rank != 0:
        _record_writes(runs_root, written)
    loss_fn = optim.total_loss
    for job in jobs:
        os.environ["MASTER_PORT"] = str(job["port"])
        polls, calls = itertools.count(1), itertools.count(1)

        def stop():
            return [rank, next(polls)] == job.get("stop_at")

        def total_loss(*args):  # a NaN loss on one rank only, where the job asks for it
            loss, parts = loss_fn(*args)
            return (loss * float("nan"), parts) if [rank, next(calls)] == job.get("nan_at") else (loss, parts)

        optim.total_loss = total_loss
        try:
            metrics = engine.run(job["spec"], job["dir"], stop)
            outcome = {"history": metrics["history"], "confusion": metrics["confusion"]}
        except Exception as err:
            outcome = {"error": type(err).__name__, "message": str(err)}
        outcome["group_still_up"] = dist.is_initialized()
        (Path(out_dir) / f"{job['name']}.rank{rank}.json").write_text(json.dumps(outcome))
    (Path(out_dir) / f"writes.rank{rank}.json").write_text(json.dumps(written))


def _ddp_spec() -> dict:
    return tiny_spec(data={"batch_size": 4}, train={"iterations": 4, "checkpoint_interval": 2, "eval_interval": 2})


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Each job run by two processes, one job after the other; returns (outcome of (job, rank), runs dir)."""
    root = tmp_path_factory.mktemp("ddp")
    runs, out = root / "runs", root / "out"
    out.mkdir()
    jobs = [
        {"name": "whole", "spec": _ddp_spec()},
        {"name": "split", "spec": _ddp_spec(), "stop_at": [1, 1]},  # rank 1 alone asks, after iteration 1
        {"name": "resumed", "spec": _ddp_spec(), "dir": "split"},
        {"name": "nan", "spec": _ddp_spec(), "nan_at": [1, 2]},
        {"name": "odd", "spec": tiny_spec(data={"batch_size": 3})},
    ]
    for job in jobs:
        job.update(port=free_port(), dir=str(runs / job.get("dir", job["name"])))
    ranks = mp.spawn(_engine_worker, args=(jobs, str(runs), str(out)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 150
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:  # a hang is the typical DDP bug: fail, and leave no process behind
            for process in ranks.processes:
                process.kill()
            pytest.fail("the two-rank runs hung")
    outcomes = {(job["name"], r): json.loads((out / f"{job['name']}.rank{r}.json").read_text())
                for job in jobs for r in range(WORLD)}
    outcomes["writes", 1] = json.loads((out / "writes.rank1.json").read_text())
    return outcomes, runs


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_ranks_train_and_rank_0_alone_writes(two_ranks):
    outcomes, runs = two_ranks
    whole = runs / "whole"
    metrics = json.loads((whole / "metrics.json").read_text())
    assert [h["iteration"] for h in metrics["history"]] == [1, 2, 3, 4]
    for rank in range(WORLD):  # every rank returns the metrics that rank 0 wrote
        assert outcomes["whole", rank] == {"history": metrics["history"], "confusion": metrics["confusion"],
                                           "group_still_up": False}
    assert sorted(p.name for p in (whole / "checkpoints").iterdir()) == ["iter_00000002.pt", "iter_00000004.pt"]
    assert {p.name for p in whole.iterdir()} == {"checkpoints", "metrics.json", "predictions.npz", "progress.json",
                                                 "spec.yaml", "tensorboard", "train.log"}
    assert outcomes["writes", 1] == []  # in any job, rank 1 created, wrote, renamed and deleted nothing


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_stop_on_one_rank_stops_every_rank_at_the_same_iteration(two_ranks):
    outcomes, runs = two_ranks
    for rank in range(WORLD):
        assert outcomes["split", rank]["error"] == "Interrupted"
        assert "stopped at iteration 1;" in outcomes["split", rank]["message"]
    assert "resumed from iteration 1" in (runs / "split" / "train.log").read_text()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_resumed_two_rank_run_ends_as_an_uninterrupted_one(two_ranks):
    _, runs = two_ranks
    whole = json.loads((runs / "whole" / "metrics.json").read_text())
    resumed = json.loads((runs / "split" / "metrics.json").read_text())
    for key in ("history", "evals", "confusion"):
        assert resumed[key] == whole[key], key
    a, b = (checkpoint.load_latest(runs / name) for name in ("whole", "split"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # each rank's own random state is kept, and they differ (own dropout masks and Gumbel draws)
    assert len(a["rank_rngs"]) == WORLD
    assert not torch.equal(a["rank_rngs"][0]["torch"], a["rank_rngs"][1]["torch"])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_nan_loss_on_one_rank_stops_every_rank(two_ranks):
    outcomes, _ = two_ranks
    for rank in range(WORLD):
        assert outcomes["nan", rank]["error"] == "NonFiniteLoss"
        assert "loss is nan at iteration 2 " in outcomes["nan", rank]["message"]
        assert outcomes["nan", rank]["group_still_up"] is False


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_batch_that_the_ranks_cannot_split_is_a_clear_error(two_ranks):
    outcomes, runs = two_ranks
    for rank in range(WORLD):
        assert outcomes["odd", rank]["error"] == "ValueError"
        assert "data.batch_size is 3" in outcomes["odd", rank]["message"]
        assert "world size 2" in outcomes["odd", rank]["message"]
    assert not (runs / "odd").exists()
