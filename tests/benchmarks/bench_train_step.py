"""Training-step time of the nonparametric (ProtoSeg) head over the parametric
head on the same backbone and decoder, plus eval-mode MACs and parameters.

    python tests/benchmarks/bench_train_step.py [--backbone resnet18] [--size 256] [--batch 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from protoseg import complexity, config
from protoseg.losses import total_loss
from protoseg.models import build_model
from protoseg.models.heads import PrototypeHead


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model, images, labels, model_cfg, repeats, device) -> tuple[float, float]:
    """Median seconds of one SGD step, and of the prototype learning inside it."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    learn_times: list[float] = []
    original = PrototypeHead.learn

    def timed_learn(self, *args):
        _sync(device)
        start = time.perf_counter()
        result = original(self, *args)
        _sync(device)
        learn_times.append(time.perf_counter() - start)
        return result

    PrototypeHead.learn = timed_learn
    try:
        steps = []
        for i in range(repeats + 1):  # the first is warm-up
            _sync(device)
            start = time.perf_counter()
            loss, _ = total_loss(model(images, labels), labels, model_cfg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            _sync(device)
            if i:
                steps.append(time.perf_counter() - start)
    finally:
        PrototypeHead.learn = original
    return statistics.median(steps), statistics.median(learn_times[1:]) if learn_times else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=256, help="square crop side")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--dim", type=int, default=720, help="decoder channels = embedding dim D")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--complexity-size", type=int, default=512)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, args.classes, (args.batch, args.size, args.size), device=device)
    print(f"device {device}, backbone {args.backbone}, D={args.dim}, K={args.classes}, M=10, "
          f"batch {args.batch} x {args.size}x{args.size} (N = {args.batch * (args.size // 4) ** 2} pixels at stride 4), "
          f"threads {torch.get_num_threads()}")
    rows = {}
    for head in ("parametric", "nonparametric"):
        cfg = config.resolve({"model": {"backbone": args.backbone, "head": head,
                                        "decoder_channels": args.dim}})["model"]
        model = build_model(cfg, args.classes).to(device).train()
        step, learn = time_steps(model, images, labels, cfg, args.repeats, device)
        size = (args.complexity_size, args.complexity_size)
        rows[head] = (step, learn, complexity.measure(model, size))
    print(f"\n{'head':<14} {'step ms':>9} {'proto-learn ms':>15} {'params learnable':>17} {'params total':>13} "
          f"{'GMACs@' + str(args.complexity_size):>11} {'GFLOPs(torch)':>14}")
    for head, (step, learn, c) in rows.items():
        print(f"{head:<14} {step * 1e3:>9.1f} {learn * 1e3:>15.1f} {c['params_learnable'] / 1e6:>16.2f}M "
              f"{c['params_total'] / 1e6:>12.2f}M {c['macs'] / 1e9:>11.2f} {c['flops'] / 1e9:>14.2f}")
    ratio = rows["nonparametric"][0] / rows["parametric"][0]
    print(f"\nnonparametric / parametric training step: {ratio:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
