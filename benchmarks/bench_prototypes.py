"""Benchmark: vectorised prototype step vs the official per-class loop.

    python benchmarks/bench_prototypes.py [--device cpu|cuda|all] [--weights bool|real|both] [--repeats 5]

One training step's prototype work at Cityscapes/ADE-like scale: N = 2 x 128
x 128 pixels (batch 2 at stride 4 of 512 x 512), D = 720, M = 10, K in
{19, 150, 171}. Unit embeddings clustered around their class's prototypes,
unit prototypes, a blocky label map with every class present in uneven
sizes, ~5% ignored pixels, ~70% correctly predicted pixels.

Vectorised = own_class_similarity + sinkhorn_plan + assign(argmax) +
momentum_update + proto_target (what `PrototypeHead.learn` does).
Loop = `official_prototype_step` of tests/reference_official.py (argmax
assignment). The (N, K*M) similarity itself is computed outside the timing
for both (the forward pass needs it anyway).

Update weights: `bool` is the correctly-predicted mask (what the head
passes); `real` is that mask times a uniform [0, 1) confidence, given to both
sides as float weights.

Not collected by pytest (the file name does not match test_*.py).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

_ROOT = Path(__file__).resolve().parents[1]
_TESTS = _ROOT / "tests"
for _p in (str(_TESTS), str(_ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from protoseg.models.prototypes import (assign, momentum_update, own_class_similarity,  # noqa: E402
                                       sinkhorn_plan)
from reference_official import argmax_assignment, official_prototype_step  # noqa: E402

GAMMA = 0.999


def make_inputs(k: int, m: int = 10, d: int = 720, batch: int = 2, hw: int = 128, seed: int = 0,
                ignore: float = 0.05, correct_rate: float = 0.7, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    # blocky label map: 8x8-pixel cells, every class present, sizes uneven (log-uniform weights)
    cells = batch * (hw // 8) ** 2
    weights = (torch.rand(k, generator=g) * 4).exp()
    cell_cls = torch.cat([torch.arange(k), torch.multinomial(weights, cells - k, replacement=True, generator=g)])
    cell_cls = cell_cls[torch.randperm(cells, generator=g)].reshape(batch, 1, hw // 8, hw // 8)
    labels = F.interpolate(cell_cls.float(), scale_factor=8, mode="nearest").reshape(-1).long()
    labels[torch.rand(labels.numel(), generator=g) < ignore] = -1
    n = labels.numel()

    protos = F.normalize(torch.randn(k, m, d, generator=g), dim=-1)
    # embeddings near one of their class's prototypes (cosine ~0.4-0.6), so
    # similarities are spread like a trained model's, not all ~0
    centre = protos[labels.clamp(min=0), torch.randint(0, m, (n,), generator=g)]
    emb = F.normalize(centre + 0.05 * torch.randn(n, d, generator=g), dim=-1)
    correct = torch.rand(n, generator=g) < correct_rate
    real = correct * torch.rand(n, generator=g)

    sim = emb @ protos.reshape(k * m, d).t()  # (N, K*M), as the head computes it
    sim_all = torch.einsum("nd,kmd->nmk", emb, protos)  # the official `masks`
    out = dict(protos=protos, emb=emb, labels=labels, sim=sim, sim_all=sim_all, bool=correct, real=real)
    return {key: v.to(device) for key, v in out.items()}


def vectorised_step(x, k: int, m: int, weights: str):
    labels = x["labels"]
    plan = sinkhorn_plan(own_class_similarity(x["sim"], labels, m), labels, k)
    chosen = assign(plan, "argmax")
    new = momentum_update(x["protos"], x["emb"], labels, chosen, x[weights], GAMMA)
    target = torch.where(labels >= 0, labels * m + chosen, -1)
    return new, plan, target


def loop_step(x, k: int, m: int, weights: str):
    return official_prototype_step(x["protos"], x["emb"], x["labels"], x["sim_all"], x[weights], GAMMA, k,
                                   argmax_assignment)


def timeit(fn, device: str, warmup: int, repeats: int) -> float:
    """Median wall time in ms."""
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run(ks=(19, 150, 171), devices=("cpu",), repeats: int = 5, warmup: int = 2, m: int = 10, d: int = 720,
        hw: int = 128, batch: int = 2, weight_kinds=("bool", "real")):
    rows = []
    for device in devices:
        for k in ks:
            x = make_inputs(k, m, d, batch, hw, device=device)
            for wk in weight_kinds:
                with torch.no_grad():
                    new_v, plan_v, target_v = vectorised_step(x, k, m, wk)
                    new_l, plan_l, target_l = loop_step(x, k, m, wk)
                    t_loop = timeit(lambda: loop_step(x, k, m, wk), device, warmup, repeats)
                    t_vec = timeit(lambda: vectorised_step(x, k, m, wk), device, warmup, repeats)
                rows.append(dict(K=k, device=device, weights=wk, loop_ms=t_loop, vec_ms=t_vec,
                                 speedup=t_loop / t_vec, plan_diff=(plan_v - plan_l).abs().max().item(),
                                 proto_diff=(new_v - new_l).abs().max().item(),
                                 target_mismatch=(target_v != target_l).sum().item()))
                print(format_row(rows[-1]), flush=True)
    return rows


HEADER = (f"{'K':>4} {'device':>7} {'weights':>7} {'loop ms':>9} {'vec ms':>9} {'speedup':>8} {'plan diff':>10} "
          f"{'proto diff':>10} {'tgt!=':>6}")


def format_row(r) -> str:
    return (f"{r['K']:>4} {r['device']:>7} {r['weights']:>7} {r['loop_ms']:>9.1f} {r['vec_ms']:>9.1f} "
            f"{r['speedup']:>7.1f}x {r['plan_diff']:>10.1e} {r['proto_diff']:>10.1e} {r['target_mismatch']:>6}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda, all, or auto (cpu, plus cuda when available)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--k", type=int, nargs="+", default=[19, 150, 171])
    ap.add_argument("--weights", choices=("bool", "real", "both"), default="both",
                    help="update weights: the bool correct mask, real-valued ones, or both")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--hw", type=int, default=128, help="feature map side (N = 2 * hw * hw)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device in ("auto", "all"):
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    if any(dv.startswith("cuda") for dv in devices) and not torch.cuda.is_available():
        ap.error("CUDA is not available")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"N = {2 * args.hw * args.hw}, M = 10, D = 720; median of {args.repeats} after {args.warmup} warm-up")
    print(HEADER)
    kinds = ("bool", "real") if args.weights == "both" else (args.weights,)
    return run(tuple(args.k), tuple(devices), args.repeats, args.warmup, hw=args.hw, weight_kinds=kinds)


if __name__ == "__main__":
    main()
