"""Training-step time of the nonparametric (ProtoSeg) head over the parametric
head on the same backbone and decoder, plus eval-mode MACs and parameters and,
with --fps N, the inference FPS of both heads (batch 1, 5 warm-up images, then
N timed, synchronised: MMSegmentation's benchmark convention).

    python benchmarks/bench_train_step.py [--backbone resnet18] [--size 256 [W]] [--batch 2] [--amp]
                                                [--fps 50]
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
from protoseg.speed import images_per_second, sync


def inference_fps(model, image, count: int, device, amp: bool, warmup: int = 5) -> float:
    def infer(i: int) -> None:
        with torch.autocast(device_type=device.type, enabled=amp):
            model(image)

    model.eval()
    try:
        return images_per_second(infer, count, warmup, device)[0]
    finally:
        model.train()


def time_steps(model, images, labels, model_cfg, repeats, device, amp=False) -> tuple[float, float]:
    """Median seconds of one SGD step, and of the prototype learning inside it."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    learn_times: list[float] = []
    original = PrototypeHead.learn

    def timed_learn(self, *args):
        sync(device)
        start = time.perf_counter()
        result = original(self, *args)
        sync(device)
        learn_times.append(time.perf_counter() - start)
        return result

    PrototypeHead.learn = timed_learn
    try:
        steps = []
        for i in range(repeats + 1):  # the first is warm-up
            sync(device)
            start = time.perf_counter()
            with torch.autocast(device_type=device.type, enabled=amp):
                out = model(images, labels)
            loss, _ = total_loss(out, labels, model_cfg)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            sync(device)
            if i:
                steps.append(time.perf_counter() - start)
    finally:
        PrototypeHead.learn = original
    return statistics.median(steps), statistics.median(learn_times[1:]) if learn_times else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, nargs="+", default=[256], help="crop side, or height and width")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    parser.add_argument("--fps", type=int, default=0, help="also time inference of N images at batch 1")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--dim", type=int, default=720, help="decoder channels = embedding dim D")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--complexity-size", type=int, default=512)
    args = parser.parse_args()
    device = torch.device(args.device)
    amp = args.amp and device.type == "cuda"
    h, w = (args.size * 2)[:2]
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, h, w, device=device)
    labels = torch.randint(0, args.classes, (args.batch, h, w), device=device)
    print(f"device {device}, backbone {args.backbone}, D={args.dim}, K={args.classes}, M=10, "
          f"batch {args.batch} x {h}x{w} (N = {args.batch * (h // 4) * (w // 4)} pixels at stride 4), "
          f"AMP {amp}, threads {torch.get_num_threads()}")
    rows = {}
    for head in ("parametric", "nonparametric"):
        cfg = config.resolve({"model": {"backbone": args.backbone, "head": head,
                                        "decoder_channels": args.dim}})["model"]
        model = build_model(cfg, args.classes).to(device).train()
        step, learn = time_steps(model, images, labels, cfg, args.repeats, device, amp)
        fps = inference_fps(model, images[:1], args.fps, device, amp) if args.fps else float("nan")
        size = (args.complexity_size, args.complexity_size)
        rows[head] = (step, learn, fps, complexity.measure(model, size))
    print(f"\n{'head':<14} {'step ms':>9} {'proto-learn ms':>15} {'FPS@' + f'{h}x{w}':>13} {'params learnable':>17} "
          f"{'params total':>13} {'GMACs@' + str(args.complexity_size):>11} {'GFLOPs(torch)':>14}")
    for head, (step, learn, fps, c) in rows.items():
        print(f"{head:<14} {step * 1e3:>9.1f} {learn * 1e3:>15.1f} {fps:>13.1f} {c['params_learnable'] / 1e6:>16.2f}M "
              f"{c['params_total'] / 1e6:>12.2f}M {c['macs'] / 1e9:>11.2f} {c['flops'] / 1e9:>14.2f}")
    ratio = rows["nonparametric"][0] / rows["parametric"][0]
    print(f"\nnonparametric / parametric training step: {ratio:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
