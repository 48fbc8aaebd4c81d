"""Benchmark: the fixed cost of a run, everything but its training steps, broken down by phase.

    python tests/benchmarks/bench_fixed_cost.py [--backbone resnet18] [--crop 32] [--iterations 4]
                                                [--complexity-size 512 512] [--fps-images 200] [--runs 3]

(a) Interpreter start and imports, each in a fresh subprocess: `python -c pass`, `import torch`,
    `import protoseg.engine` (what every worker imports before its run).
(b) One run in this process (protoseg.engine.run), each phase timed by wrapping the engine's own
    functions: data sets, model build, optimizer, resume, training steps, checkpoint writes, evaluation,
    complexity counting (first, then again from the sweep's cache), inference FPS, prediction PNGs,
    TensorBoard, the rest.
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def spec(args) -> dict:
    side = args.crop
    return {
        "model": {"backbone": args.backbone, "head": "nonparametric", "num_prototypes": 2},
        "data": {"crop_size": [side, side], "batch_size": 2,
                 "synthetic": {"image_size": [side, side], "num_train": 8, "num_val": 4}},
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


def phases(run_spec: dict, folder: Path) -> tuple[dict[str, float], float, dict]:
    """Seconds per phase of one in-process run; (phases, total wall, metrics)."""
    from protoseg import checkpoint, complexity, engine

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
                               (engine, "inference_fps", "inference FPS"),
                               (engine, "_save_predictions", "prediction PNGs"), (engine, "Board", "TensorBoard")]:
        timed(owner, name, label)
    sweep = folder / "sweep"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text("{}")  # a harness sweep: complexity counts are cached in it
    start = time.perf_counter()
    metrics = engine.run(run_spec, sweep / "first")
    total = time.perf_counter() - start
    first = {**spent, "training steps": metrics["train_time_s"]}
    again = time.perf_counter()
    engine.run(run_spec, sweep / "second")
    first["(a second run of the sweep, total)"] = time.perf_counter() - again
    return first, total, metrics


def through_harness(run_spec: dict, folder: Path, runs: int) -> tuple[float, float]:
    """(wall per run of `harness run`, mean training seconds per run)."""
    path = folder / "fixed.yaml"
    path.write_text(yaml.safe_dump({"sweep": "fixed", "base": run_spec, "matrix": {"train.seed": list(range(runs))},
                                    "executor": {"backend": "local", "jobs": 1}}))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path), "--results", str(folder / "results")],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    trained = [json.loads(p.read_text())["train_time_s"] for p in (folder / "results" / "fixed").glob("*/metrics.json")]
    return wall / runs, sum(trained) / len(trained)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--complexity-size", type=int, nargs=2, default=[512, 512])
    ap.add_argument("--fps-images", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3, help="cells of the `harness run` sweep (0: skip it)")
    args = ap.parse_args(argv)
    run_spec = spec(args)
    print(f"{args.backbone} at {args.crop}x{args.crop}, {args.iterations} iterations, complexity at "
          f"{args.complexity_size[0]}x{args.complexity_size[1]}, FPS over {args.fps_images} images")
    print("\n(a) start-up, best of 3 fresh interpreters")
    for name, seconds in imports().items():
        print(f"  {name:<40} {seconds:6.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        spent, total, _ = phases(run_spec, Path(tmp))
        print("\n(b) one run in process (engine.run), by phase")
        second = spent.pop("(a second run of the sweep, total)")
        for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<40} {seconds:6.2f} s")
        print(f"  {'the rest':<40} {total - sum(spent.values()):6.2f} s")
        print(f"  {'total':<40} {total:6.2f} s")
        print(f"  {'a second run of the same sweep, total':<40} {second:6.2f} s  (complexity from the cache)")
        if args.runs:
            per_run, trained = through_harness(run_spec, Path(tmp), args.runs)
            print(f"\n(c) `harness run`, {args.runs} runs one at a time: {per_run:.2f} s wall per run, "
                  f"of which {trained:.2f} s training steps")


if __name__ == "__main__":
    main()
