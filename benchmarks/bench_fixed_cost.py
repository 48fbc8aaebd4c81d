"""Benchmark: the fixed cost of a run, everything but its training steps, broken down by phase.

    python benchmarks/bench_fixed_cost.py [--backbone resnet18] [--crop 32] [--image-size SIDE]
                                                [--iterations 4] [--complexity-size 512 512]
                                                [--fps-images 200] [--runs 3]

--image-size: the side of the synthetic images (default: the crop). Larger than the crop, training
stays cheap while evaluation and FPS timing run on full images, as on a real dataset (crops of 512 from
2048x1024 images).

(a) Interpreter start and imports, each in a fresh subprocess: `python -c pass`, `import torch`,
    `import protoseg.engine` (what every worker imports before its run).
(b) Three runs in this process (protoseg.engine.run), each phase timed by wrapping the engine's own
    functions: data sets, model build, optimizer, resume, training steps, checkpoint writes, evaluation,
    complexity counting, inference FPS, prediction PNGs, TensorBoard, the rest. The runs: the first of
    a sweep, a second of the same sweep, a first of another sweep in the same results folder (what a
    cache of the MAC counts saves shows in the last two). "after training" sums the phases that follow
    the last iteration (evaluation, complexity, FPS, predictions): the fixed cost a user waits through
    at "20/20".
(c) `harness run` of a sweep of --runs such cells on the local backend, one at a time: wall per run
    against the training time its metrics record.

Figures are of this machine, under whatever else runs on it. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def spec(args) -> dict:
    side, image = args.crop, args.image_size or args.crop
    return {
        "model": {"backbone": args.backbone, "head": "nonparametric", "prototype": {"num_prototypes": 2}},
        "data": {"crop_size": [side, side], "batch_size": 2,
                 "synthetic": {"image_size": [image, image], "num_train": 8, "num_val": 4}},
        "train": {"iterations": args.iterations, "log_interval": 1, "progress": False, "threads": args.threads},
        "eval": {"complexity_size": list(args.complexity_size), "fps_images": args.fps_images},
    }


def subprocess_seconds(code: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        best = min(best, time.perf_counter() - start)
    return best


def imports() -> dict[str, float]:
    bare = subprocess_seconds("pass")
    torch = subprocess_seconds("import torch")
    engine = subprocess_seconds("import protoseg.engine")
    return {"interpreter": bare, "import torch": torch - bare, "import protoseg.engine (after torch)": engine - torch}


AFTER_TRAINING = ("evaluation", "complexity counting", "inference FPS", "prediction PNGs")
RUNS = ("first run", "same sweep", "other sweep")


def phases(run_spec: dict, folder: Path) -> dict[str, dict[str, float]]:
    """Seconds per phase of three in-process runs (RUNS), each with its total wall ("total")."""
    from protoseg import checkpoint, complexity, engine, phases, recorder

    spent: dict[str, float] = defaultdict(float)

    def timed(owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                spent[label] += time.perf_counter() - start
        setattr(owner, name, wrapper)

    for owner, name, label in [(engine, "build_dataset", "data sets"), (engine, "build_model", "model build"),
                               (engine, "build_optimizer", "optimizer"), (engine, "_resume", "resume check"),
                               (checkpoint, "save", "checkpoint writes"), (engine, "evaluate", "evaluation"),
                               (complexity, "measure", "complexity counting"),
                               (phases, "inference_fps", "inference FPS"),
                               (phases, "_save_predictions", "prediction PNGs"), (recorder, "Board", "TensorBoard")]:
        timed(owner, name, label)
    out = {}
    for name, run_dir in zip(RUNS, ["a/first", "a/second", "b/first"]):
        spent.clear()
        start = time.perf_counter()
        # as the harness runs it: complexity counts are cached for the results folder
        metrics = engine.run(run_spec, folder / "results" / run_dir,
                             complexity_cache=folder / "results" / ".complexity")
        total = time.perf_counter() - start
        out[name] = {**spent, "training steps": metrics["train_time_s"],
                     "after training": sum(spent[k] for k in AFTER_TRAINING), "total": total}
    return out


def through_harness(run_spec: dict, folder: Path, runs: int) -> tuple[float, float]:
    """(wall per run of `harness run`, mean training seconds per run)."""
    path = folder / "fixed.yaml"
    path.write_text(yaml.safe_dump({"sweep": "fixed", "base": run_spec, "matrix": {"train.seed": list(range(runs))},
                                    "executor": {"backend": "local", "jobs": 1}}))
    results = folder / "harness-results"  # not (b)'s: no count cached by it
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path), "--results", str(results)],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    trained = [json.loads(p.read_text())["train_time_s"] for p in (results / "fixed").glob("*/metrics.json")]
    return wall / runs, sum(trained) / len(trained)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--image-size", type=int, help="side of the synthetic images (default: --crop)")
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--complexity-size", type=int, nargs=2, default=[512, 512])
    ap.add_argument("--fps-images", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3, help="cells of the `harness run` sweep (0: skip it)")
    args = ap.parse_args(argv)
    run_spec = spec(args)
    image = args.image_size or args.crop
    print(f"{args.backbone}, crops {args.crop}x{args.crop} of {image}x{image} images, {args.iterations} iterations, "
          f"complexity at {args.complexity_size[0]}x{args.complexity_size[1]}, FPS over {args.fps_images} images")
    print("\n(a) start-up, best of 3 fresh interpreters")
    for name, seconds in imports().items():
        print(f"  {name:<40} {seconds:6.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        spent = phases(run_spec, Path(tmp))
        print("\n(b) runs in process (engine.run), seconds by phase")
        row = "  {:<36}" + "{:>13}" * len(RUNS)
        print(row.format("", *RUNS))
        first = spent[RUNS[0]]
        order = sorted((k for k in first if k not in ("after training", "total")), key=lambda k: -first[k])
        for name in order:
            print(row.format(name, *(f"{spent[run].get(name, 0.0):.2f}" for run in RUNS)))
        rest = [spent[run]["total"] - sum(v for k, v in spent[run].items() if k not in ("after training", "total"))
                for run in RUNS]
        print(row.format("the rest", *(f"{seconds:.2f}" for seconds in rest)))
        print(row.format("total", *(f"{spent[run]['total']:.2f}" for run in RUNS)))
        print(row.format("after training (eval+MACs+FPS+PNGs)",
                         *(f"{spent[run]['after training']:.2f}" for run in RUNS)))
        if args.runs:
            per_run, trained = through_harness(run_spec, Path(tmp), args.runs)
            print(f"\n(c) `harness run`, {args.runs} runs one at a time: {per_run:.2f} s wall per run, "
                  f"of which {trained:.2f} s training steps")


if __name__ == "__main__":
    main()
