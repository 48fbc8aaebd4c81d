"""Speed of the sweep layer: `harness report` / `harness status` on a sweep of
10,000 finished runs, and the local backend's cost per run over calling the
engine directly.

    python benchmarks/bench_harness.py [--runs 10000] [--repeats 3] [--overhead-runs 4]
                                             [--skip-report] [--skip-overhead] [--profile]

(a) builds a synthetic sweep of --runs run folders in a temp dir (metrics.json
    with the keys and size protoseg.engine writes, ~30 history records,
    status.json, spec.yaml, sweep.json), then times, median of --repeats:
    report in process (load_runs + aggregate + render), `harness report` as a
    subprocess (interpreter start included; target < 3 s), status in process
    and `harness status` as a subprocess (target < 1 s). A missed target (or
    --profile) prints a cProfile of the in-process path.
(b) runs --overhead-runs tiny runs (tiny_spec, 3 iterations) once as
    sequential `python -m protoseg.engine` subprocesses and once through
    `harness run --jobs 1`, and prints the harness's overhead per run.
(c) plans a matrix of --plan-cells cells (10 values on each of 5 axes):
    `harness run --dry-run` as a subprocess, wall time and peak memory
    (target < 5 s), and `harness run --only` selecting one cell, which must
    create one run folder and no other.
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import tiny_spec  # noqa: E402

PLAN_TARGET_S = 5.0
REPORT_TARGET_S = 3.0
STATUS_TARGET_S = 1.0

BACKBONES = ["resnet18", "resnet50", "hrnet_w48", "convnext_tiny", "tf_efficientnet_lite0"]
METHODS = [("parametric", 10)] + [("nonparametric", m) for m in (1, 2, 5, 10, 20)]
DATASETS = {"synthetic": [f"class{i}" for i in range(4)],
            "camvid": ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                       "Pedestrian", "Bicyclist"]}


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def cli(*args, results: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args), "--results", str(results)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if check and proc.returncode != 0:
        raise SystemExit(f"harness {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


# ---- (a) a 10,000-run sweep ------------------------------------------------------------------

def real_metrics(workdir: Path) -> dict:
    """metrics.json of one real (tiny) engine run: the template of every synthetic one."""
    spec_path = workdir / "template.yaml"
    spec = tiny_spec()
    spec["model"]["decoder_channels"] = 32
    spec["train"].update(iterations=3, keep_checkpoints=1)
    spec_path.write_text(yaml.safe_dump(spec))
    out = workdir / "template"
    subprocess.run([sys.executable, "-m", "protoseg.engine", "--spec", str(spec_path), "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    return json.loads((out / "metrics.json").read_text())


def synthetic_metrics(template: dict, rng, backbone: str, head: str, prototypes: int, dataset: str,
                      seed: int, history: int = 30) -> dict:
    from protoseg import config

    names = DATASETS[dataset]
    k = len(names)
    spec = config.resolve(copy.deepcopy(template["spec"]))
    spec["model"].update(backbone=backbone, head=head, num_prototypes=prototypes, decoder_channels=None)
    spec["data"]["dataset"] = dataset
    spec["data"]["root"] = "/data/camvid" if dataset == "camvid" else None
    spec["train"].update(seed=seed, iterations=3000, log_interval=100)
    spec["eval"]["complexity_size"] = [512, 512]
    iou = rng.uniform(20, 90, k).round(4)
    records = []
    for i in range(history):
        base = {key: float(v) for key, v in template["history"][i % len(template["history"])].items()}
        base.update(iteration=(i + 1) * 100, loss=float(rng.uniform(0.1, 2.0)))
        records.append(base)
    metrics = copy.deepcopy(template)
    metrics.update({
        "mIoU": round(float(iou.mean()), 4), "aAcc": round(float(rng.uniform(60, 95)), 4),
        "mAcc": round(float(rng.uniform(40, 90)), 4),
        "per_class_iou": {name: float(v) for name, v in zip(names, iou)},
        "per_class_acc": {name: round(float(rng.uniform(30, 99)), 4) for name in names},
        "confusion": rng.integers(0, 200_000, (k, k)).tolist(),
        "class_names": names, "num_classes": k, "history": records,
        "evals": [{"iteration": 3000, "mIoU": round(float(iou.mean()), 4)}],
        "iterations": 3000, "spec": spec,
        "params_learnable": int(rng.integers(10_000_000, 70_000_000)),
        "params_total": int(rng.integers(10_000_000, 70_000_000)),
        "macs": int(rng.integers(10**10, 10**11)), "flops": int(rng.integers(2 * 10**10, 2 * 10**11)),
        "train_time_s": float(rng.uniform(100, 10_000)), "eval_time_s": float(rng.uniform(1, 100)),
        "throughput_img_s": float(rng.uniform(1, 100)),
    })
    return metrics


def build_sweep(root: Path, runs: int, template: dict) -> Path:
    import hashlib

    import numpy as np

    rng = np.random.default_rng(0)
    sweep_dir = root / "big"
    sweep_dir.mkdir(parents=True)
    cells = [(b, h, m, d) for b in BACKBONES for h, m in METHODS for d in DATASETS]
    ids, total_bytes = [], 0
    for i in range(runs):
        backbone, head, prototypes, dataset = cells[i % len(cells)]
        seed = i // len(cells)
        metrics = synthetic_metrics(template, rng, backbone, head, prototypes, dataset, seed)
        rid = hashlib.sha1(json.dumps(metrics["spec"], sort_keys=True).encode()).hexdigest()[:12]
        folder = sweep_dir / rid
        folder.mkdir()
        text = json.dumps(metrics, indent=2, sort_keys=True) + "\n"
        total_bytes += len(text)
        (folder / "metrics.json").write_text(text)
        (folder / "spec.yaml").write_text(yaml.safe_dump(metrics["spec"], sort_keys=False))
        settings = {"model.backbone": backbone, "model.head": head, "data.dataset": dataset, "train.seed": seed}
        if head == "nonparametric":
            settings["model.prototype.num_prototypes"] = prototypes
        (folder / "status.json").write_text(json.dumps({
            "run_id": rid, "state": "done", "attempts": 1, "settings": settings, "created": time.time(),
            "started": time.time(), "finished": time.time(), "updated": time.time(), "host": "node01",
            "pid": 12345, "backend": "local", "job_id": None, "error": None, "resumed": False,
            "mIoU": metrics["mIoU"]}, indent=2, sort_keys=True) + "\n")
        (folder / "train.log").write_text("")
        ids.append(rid)
    (sweep_dir / "sweep.json").write_text(json.dumps({"name": "big", "created": time.time(), "source": None,
                                                      "invocations": [], "run_ids": sorted(ids)}))
    print(f"  built {runs} run folders in {sweep_dir} ({len(set(ids))} distinct ids); "
          f"metrics.json {total_bytes / runs / 1024:.1f} KiB on average "
          f"(the template from a real run: {len(json.dumps(template, indent=2)) / 1024:.1f} KiB, "
          f"{len(template['history'])} history records)")
    return sweep_dir


def report_in_process(sweep_dir: Path) -> str:
    from harness import report

    frame = report.load_runs([sweep_dir])
    agg = report.aggregate(frame)
    return report.render(agg, "md", report.caption(frame))


def phases(sweep_dir: Path) -> dict[str, float]:
    from harness import report

    out = {}
    start = time.perf_counter()
    frame = report.load_runs([sweep_dir])
    out["load_runs"] = time.perf_counter() - start
    start = time.perf_counter()
    agg = report.aggregate(frame)
    out["aggregate"] = time.perf_counter() - start
    start = time.perf_counter()
    report.render(agg, "md", report.caption(frame))
    out["render md"] = time.perf_counter() - start
    start = time.perf_counter()
    report.render(agg, "latex", report.caption(frame))
    out["render latex"] = time.perf_counter() - start
    return out


def status_in_process(root: Path) -> list[str]:
    from harness.status import status_lines
    from harness.store import Store

    return status_lines(Store(root, "big"), 120.0)


def profile(fn, label: str, lines: int = 18) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer).strip_dirs().sort_stats("cumulative")
    stats.print_stats(lines)
    print(f"\n  cProfile of {label} (cumulative, top {lines}):")
    print("\n".join("    " + line for line in buffer.getvalue().splitlines() if line.strip()))


def bench_report_status(args, workdir: Path) -> None:
    print(f"(a) report / status on a sweep of {args.runs} finished runs")
    start = time.perf_counter()
    template = real_metrics(workdir)
    sweep_dir = build_sweep(workdir / "results", args.runs, template)
    print(f"  (setup {time.perf_counter() - start:.1f} s)")
    results = workdir / "results"

    text = report_in_process(sweep_dir)  # warm the page cache and the imports once
    rows = sum(1 for line in text.splitlines() if line.startswith("| ") and "Backbone" not in line)
    print(f"  report table: {rows} rows")
    t_report, all_report = median_time(lambda: report_in_process(sweep_dir), args.repeats)
    for name, seconds in phases(sweep_dir).items():
        print(f"    {name:<14} {seconds:6.3f} s")
    t_report_cli, all_report_cli = median_time(lambda: cli("report", "big", results=results), args.repeats)
    t_status, all_status = median_time(lambda: status_in_process(results), args.repeats)
    t_status_cli, all_status_cli = median_time(lambda: cli("status", "big", results=results), args.repeats)
    t_python, _ = median_time(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), args.repeats)
    t_import, _ = median_time(lambda: subprocess.run([sys.executable, "-c", "import harness.report"],
                                                     cwd=ROOT, check=True), args.repeats)

    def line(label, median, times, target=None):
        verdict = "" if target is None else (f"  target < {target:.0f} s: " + ("ok" if median < target else "MISSED"))
        print(f"  {label:<36} {median:7.3f} s   (runs: {', '.join(f'{t:.3f}' for t in times)}){verdict}")

    print(f"  median of {args.repeats}:")
    line("report, in process", t_report, all_report)
    line("`harness report` subprocess", t_report_cli, all_report_cli, REPORT_TARGET_S)
    line("status, in process", t_status, all_status)
    line("`harness status` subprocess", t_status_cli, all_status_cli, STATUS_TARGET_S)
    print(f"  {'(python -c pass)':<36} {t_python:7.3f} s")
    label = '(python -c "import harness.report")'
    print(f"  {label:<36} {t_import:7.3f} s")
    if args.profile or t_report_cli >= REPORT_TARGET_S:
        profile(lambda: report_in_process(sweep_dir), "report in process")
    if args.profile or t_status_cli >= STATUS_TARGET_S:
        profile(lambda: status_in_process(results), "status in process")


# ---- (b) the local backend's overhead per run --------------------------------------------------

def bench_overhead(args, workdir: Path) -> None:
    n = args.overhead_runs
    print(f"\n(b) local backend overhead: {n} tiny runs (tiny_spec, 3 iterations), sequential")
    base = tiny_spec()
    base["train"].update(iterations=3, keep_checkpoints=1)
    specs = []
    for seed in range(n):
        spec = copy.deepcopy(base)
        spec["train"]["seed"] = seed
        path = workdir / f"direct_{seed}.yaml"
        path.write_text(yaml.safe_dump(spec))
        specs.append(path)

    def direct():
        for i, path in enumerate(specs):
            subprocess.run([sys.executable, "-m", "protoseg.engine", "--spec", str(path),
                            "--out", str(workdir / "direct" / f"run{i}")],
                           cwd=ROOT, check=True, capture_output=True, timeout=600)

    experiment = workdir / "overhead.yaml"
    experiment.write_text(yaml.safe_dump({"sweep": "overhead", "base": base,
                                          "matrix": {"train.seed": list(range(n))},
                                          "executor": {"backend": "local", "jobs": 1}}))

    def via_harness():
        cli("run", experiment, "--jobs", "1", results=workdir / "harness")

    t_direct = time_once(direct)
    t_harness = time_once(via_harness)
    t_dry = time_once(lambda: cli("run", experiment, "--dry-run", results=workdir / "dry"))
    per_direct, per_harness = t_direct / n, t_harness / n
    print(f"  engine directly (python -m protoseg.engine x{n}) {t_direct:7.2f} s   {per_direct:6.2f} s/run")
    print(f"  harness run --jobs 1                       {t_harness:7.2f} s   {per_harness:6.2f} s/run")
    print(f"  overhead per run                           {per_harness - per_direct:+7.2f} s/run "
          f"({(per_harness / per_direct - 1) * 100:+.0f}%)")
    print(f"  of which fixed per invocation: `harness run --dry-run` (start, validate, plan) {t_dry:.2f} s "
          f"= {t_dry / n:.2f} s/run over {n} runs")
    # where a worker's time goes, from its status.json and train.log
    store_dir = workdir / "harness" / "overhead"
    gaps = []
    for status_path in sorted(store_dir.glob("*/status.json")):
        status = json.loads(status_path.read_text())
        gaps.append(status["finished"] - status["started"])
    if gaps:
        print(f"  worker: started -> finished (engine + its imports) median {statistics.median(gaps):.2f} s/run")


# ---- (c) planning a huge matrix ------------------------------------------------------------------

def bench_plan(args, workdir: Path) -> None:
    import resource

    axes = {"model.prototype.num_prototypes": list(range(1, 11)), "train.seed": list(range(10)),
            "train.lr": [round(0.01 * i, 2) for i in range(1, 11)],
            "model.prototype.gamma": [round(0.9 + 0.01 * i, 2) for i in range(10)],
            "train.iterations": list(range(1, 11)), "data.synthetic.seed": list(range(10))}
    cells = 1
    for name in list(axes):
        if cells * len(axes[name]) > args.plan_cells:
            axes.pop(name)
        else:
            cells *= len(axes[name])
    print(f"\n(c) planning a matrix of {cells} cells ({' x '.join(str(len(v)) for v in axes.values())})")
    base = tiny_spec()
    base["train"].update(iterations=1, keep_checkpoints=1)
    experiment = workdir / "huge.yaml"
    experiment.write_text(yaml.safe_dump({"sweep": "huge", "base": base, "matrix": axes,
                                          "executor": {"backend": "local", "jobs": 1}}))
    results = workdir / "plan"

    def dry_run():
        return cli("run", experiment, "--dry-run", results=results)

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t_plan = time_once(dry_run)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    verdict = "ok" if t_plan < PLAN_TARGET_S else "MISSED"
    print(f"  `harness run --dry-run`: {t_plan:.2f} s wall (target < {PLAN_TARGET_S:.0f} s: {verdict}), "
          f"peak RSS {peak / 1024:.0f} MiB" + ("" if peak > before else " (at most; an earlier child peaked higher)"))
    if args.profile:
        from harness import matrix

        profile(lambda: matrix.load(experiment), "matrix.load")
    only = ",".join(f"{name}={values[1]}" for name, values in axes.items())
    t_only = time_once(lambda: cli("run", experiment, "--only", only, results=results))
    folders = [p for p in (results / "huge").iterdir() if p.is_dir() and not p.name.startswith(".")]
    print(f"  `harness run --only {only}` (plans {cells} cells, trains one for 1 iteration): {t_only:.2f} s wall; "
          f"run folders created: {len(folders)}")


def time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--overhead-runs", type=int, default=4)
    parser.add_argument("--skip-report", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--plan-cells", type=int, default=100_000)
    parser.add_argument("--skip-plan", action="store_true")
    parser.add_argument("--profile", action="store_true", help="profile even when the targets are met")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPU(s), load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench_harness_") as tmp:
        workdir = Path(tmp)
        if not args.skip_report:
            bench_report_status(args, workdir)
        if not args.skip_overhead:
            bench_overhead(args, workdir)
        if not args.skip_plan:
            bench_plan(args, workdir)


if __name__ == "__main__":
    main()
