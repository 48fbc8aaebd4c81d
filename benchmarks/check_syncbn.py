"""model.norm: SyncBN on CUDA: every BatchNorm of a table2 model is converted, and one training step with
different images on each rank leaves identical BatchNorm statistics on every rank (per-process
BatchNorm would not). Needs CUDA; with one GPU there is one rank, so the synchronisation itself is not
exercised (said in the output). Prints one line per check.

    python benchmarks/check_syncbn.py [--backbone hrnet_w48] [--size 256 512]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank: int, world: int, args) -> None:
    from protoseg import config, distributed
    from protoseg.models import build_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    cfg = config.resolve({"model": {"backbone": args.backbone, "norm": "SyncBN", "head": "parametric"}})["model"]
    model = build_model(cfg, 19)
    converted = distributed.sync_batchnorm(model, cfg["norm"], world, "cuda")
    model = model.cuda().train()
    torch.manual_seed(rank)  # different images on each rank
    images = torch.randn(2, 3, *args.size, device="cuda")
    model(images)["seg"].mean().backward()
    stats = torch.cat([m.running_mean for m in model.modules() if isinstance(m, torch.nn.SyncBatchNorm)])
    gathered = [torch.empty_like(stats) for _ in range(world)]
    dist.all_gather(gathered, stats)
    if rank == 0:
        left = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        print(f"{args.backbone}: {converted} BatchNorm layers converted to SyncBatchNorm, {left} left unconverted")
        if world > 1:
            spread = max((g - gathered[0]).abs().max().item() for g in gathered)
            print(f"{world} ranks, different images: largest difference of BN running means across ranks "
                  f"{spread:.2e} ({'synchronised' if spread < 1e-5 else 'NOT synchronised'})")
        else:
            print("1 GPU: one rank, the statistics' synchronisation across ranks is not exercised")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="hrnet_w48")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 512])
    parser.add_argument("--port", type=int, default=29533)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("check_syncbn: no CUDA device (SyncBatchNorm does not run on CPU)")
    world = min(2, torch.cuda.device_count())
    mp.spawn(worker, args=(world, args), nprocs=world)


if __name__ == "__main__":
    main()
