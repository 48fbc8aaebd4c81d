"""Benchmark: a sweep of many tiny cells on a multi-node dev SLURM under faults, against the same cells
without faults (issue 20).

    sudo .venv/bin/python benchmarks/bench_cluster_faults.py [--cells 1000] [--nodes 4] [--jobs 8]
        [--gap 20] [--seed 0] [--work /tmp/bench-faults] [--tmpfs-mb 3072] [--keep]

Needs root: slurm/dev-cluster (network namespaces), a tmpfs mount. What it does:
1. `slurm/dev-cluster up WORK/slurm --nodes N`, each node one CPU; an experiment of --cells tiny cells
   (train.seed 0..cells-1: 4 iterations, a checkpoint at 2, checkpoints deleted once done) on the SLURM
   backend as one job array, --jobs tasks at a time.
2. Fault-free, in WORK/clean: `harness run` with executor.wait false (the submission, timed) and `harness
   status` timed three times (its squeue calls counted through a logging `squeue` first on PATH), both while
   the nodes are drained, so that they measure the harness and not the cells running on the same 2 cores;
   then the nodes resumed and every cell waited on.
   With --reference local the fault-free run trains on the local backend instead (the same mIoU per run id,
   without a python start-up per cell: 1,000 cells in 27 min here, against about 1 h 30 min on the dev
   SLURM), and the submission is timed on its own in WORK/submit, its cells cancelled.
3. Under faults, in WORK/faulted, a tmpfs of --tmpfs-mb: a driver loop that runs `harness run` again whenever
   it ends, as a user would, until every cell is done; meanwhile, at random moments (exponential gaps of
   mean --gap s), one of FAULTS: kill -9 of a task that trains, kill -9 and restart of slurmctld, a node drained
   for 20 s, three array tasks scancelled, two requeued, kill -9 of the driver, the results tmpfs full for 15 s.
4. Checks: every cell done, each exactly once (one "done:" line in its train.log; attempts from status.json),
   and every run id's mIoU identical to the fault-free run's. Prints the figures; writes WORK/figures.json and
   WORK/cells_done.png (cells done over time, both runs, the faults marked).
Figures are of this machine (2 cores: the nodes share them), under whatever else runs on it. SIGTERM or Ctrl-C
during the faulted run ends it with the figures and the plot so far.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from harness import matrix  # noqa: E402
from harness.store import Store  # noqa: E402
from protoseg.io import atomic_write_json  # noqa: E402

SWEEP = "faults"
SCRIPT = ROOT / "slurm" / "dev-cluster"
FAULTS = ("kill_task", "restart_controller", "drain_node", "scancel_tasks", "requeue_tasks", "kill_driver",
          "fill_disk")


def experiment(path: Path, cells: int, jobs: int) -> list[str]:
    """The experiment file of `cells` tiny cells; their run ids."""
    doc = {"sweep": SWEEP,
           "base": {"model": {"backbone": "resnet18", "decoder_channels": 32, "prototype": {"num_prototypes": 2}},
                    "data": {"crop_size": [64, 64], "batch_size": 2,
                             "synthetic": {"image_size": [64, 64], "num_train": 4, "num_val": 2}},
                    "train": {"iterations": 4, "checkpoint_interval": 2, "keep_checkpoints": 1,
                              "keep_checkpoints_when_done": False, "log_interval": 1, "progress": False,
                              "threads": 1},
                    "eval": {"complexity_size": [64, 64], "fps_images": 0}},
           "matrix": {"train.seed": list(range(cells))},
           "executor": {"backend": "slurm", "jobs": jobs, "partition": "debug", "cpus_per_task": 1,
                        "timeout_min": 60, "wait": True}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return [run.run_id for run in matrix.load(str(path)).runs]


class Cluster:
    """slurm/dev-cluster with N nodes, and the environment its commands need (a counting squeue on PATH)."""

    def __init__(self, work: Path, nodes: int):
        self.dir, self.nodes = work / "slurm", nodes
        shim = work / "bin"
        shim.mkdir(parents=True, exist_ok=True)
        squeue = shim / "squeue"  # counts the calls of a process that sets SQUEUE_LOG
        squeue.write_text('#!/bin/sh\n[ -n "$SQUEUE_LOG" ] && echo "$$" >>"$SQUEUE_LOG"\nexec /usr/bin/squeue "$@"\n')
        squeue.chmod(0o755)
        self.env = {**os.environ, "SLURM_CONF": str(self.dir / "slurm.conf"),
                    "PATH": f"{shim}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}

    def up(self) -> None:
        out = subprocess.run([str(SCRIPT), "up", str(self.dir), "--nodes", str(self.nodes), "--no-check"],
                             capture_output=True, text=True, env={**self.env, "DEV_SLURM_CPUS": "1"})
        if out.returncode:
            raise RuntimeError(f"slurm/dev-cluster up failed:\n{out.stderr}")

    def down(self) -> None:
        subprocess.run([str(SCRIPT), "down", str(self.dir)], capture_output=True, env=self.env)

    def call(self, *args: str) -> str:
        return subprocess.run(list(args), capture_output=True, text=True, env=self.env, timeout=60).stdout

    def set_nodes(self, state: str) -> None:
        for node in range(1, self.nodes + 1):
            self.call("scontrol", "update", f"NodeName=node{node}", f"State={state}", "Reason=bench")

    def tasks(self, states: str, older_than: float = 0) -> list[str]:
        """The sweep's array tasks in `states` that have run for more than `older_than` seconds."""
        out = self.call("squeue", "-h", "-r", "-n", f"protoseg-{SWEEP}", "-t", states, "-o", "%i %M")
        found = []
        for line in out.splitlines():
            task, used = line.split()
            days, _, clock = used.rpartition("-")
            seconds = sum(int(part) * 60 ** i for i, part in enumerate(reversed(clock.split(":"))))
            if seconds + 86400 * int(days or 0) >= older_than:
                found.append(task)
        return found

    def task_processes(self, older_than: float) -> list[int]:
        """The pids of the python processes (not their srun) of this cluster's array tasks that started more
        than `older_than` seconds ago."""
        found, conf = [], f"SLURM_CONF={self.env['SLURM_CONF']}".encode()
        ticks, uptime = os.sysconf("SC_CLK_TCK"), float(Path("/proc/uptime").read_text().split()[0])
        for proc in Path("/proc").iterdir():
            try:
                if (proc / "comm").read_text().startswith("python") and \
                        b"submitit.core._submit" in (proc / "cmdline").read_bytes() and \
                        conf in (proc / "environ").read_bytes().split(b"\0") and \
                        uptime - int((proc / "stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks > older_than:
                    found.append(int(proc.name))
            except (OSError, ValueError, IndexError):
                continue
        return found


class Sweep:
    """One results folder of the experiment: `harness` commands on it and how many of its cells are done."""

    def __init__(self, cluster: Cluster, exp: Path, results: Path, run_ids: list[str]):
        self.cluster, self.exp, self.results, self.run_ids = cluster, exp, results, run_ids
        self.store = Store(results, SWEEP)
        self.driver: subprocess.Popen | None = None
        self.samples: list[tuple[float, int]] = []

    def harness(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "harness.cli", *args, "--results", str(self.results)]

    def run_dir(self, rid: str) -> Path:
        return self.store.run_dir(rid)

    def done(self) -> int:
        return sum((self.run_dir(rid) / "metrics.json").exists() for rid in self.run_ids)

    def training_pids(self) -> set[int]:
        """The processes that hold the claim of a running run (its attempt counted): past their start-up."""
        claims = [self.store.claim_info(rid) for rid in self.run_ids
                  if self.store.status(rid).get("state") == "running"]
        return {claim.get("pid") for claim in claims if claim}

    def sample(self, start: float) -> int:
        done = self.done()
        self.samples.append((time.time() - start, done))
        return done

    def start_driver(self, log) -> subprocess.Popen:
        self.driver = subprocess.Popen(self.harness("run", str(self.exp)), cwd=ROOT, env=self.cluster.env,
                                       stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        return self.driver


class Faults(threading.Thread):
    """Injects faults into a running sweep: at random (kinds drawn, exponential gaps of mean `gap`), or each
    kind of `order` once, `gap` seconds apart. Each waits until it has something to act on."""

    def __init__(self, sweep: Sweep, start: float, gap: float, rng: random.Random, order: tuple[str, ...] = ()):
        super().__init__(daemon=True)
        self.sweep, self.cluster, self.start_time, self.gap, self.rng, self.order = \
            sweep, sweep.cluster, start, gap, rng, order
        self.stop, self.log = threading.Event(), []  # (seconds since start, kind, what was done)

    def run(self) -> None:
        kinds = iter(self.order) if self.order else iter(lambda: self.rng.choice(FAULTS), None)
        for kind in kinds:
            if self.stop.wait(self.gap if self.order else self.rng.expovariate(1 / self.gap)):
                return
            while not self.stop.is_set():
                what = getattr(self, kind)()
                if what:
                    self.log.append((time.time() - self.start_time, kind, what))
                    break
                self.stop.wait(0.5)  # nothing to act on yet

    def kill_task(self) -> str | None:
        pids = self.cluster.task_processes(older_than=5)
        if pids:  # the status files read only when there is a task to kill
            training = self.sweep.training_pids()
            pids = [pid for pid in pids if pid in training]
        if not pids:
            return None
        pid = self.rng.choice(pids)
        os.kill(pid, signal.SIGKILL)
        return f"kill -9 task process {pid}"

    def restart_controller(self) -> str:
        pid = int((self.cluster.dir / "run" / "slurmctld.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        self.stop.wait(3)
        self.cluster.up()  # starts what is missing: slurmctld, which reads its saved state
        return f"slurmctld {pid} killed and restarted"

    def drain_node(self) -> str:
        node = f"node{self.rng.randint(1, self.cluster.nodes)}"
        self.cluster.call("scontrol", "update", f"NodeName={node}", "State=DRAIN", "Reason=bench")
        threading.Timer(20, self.cluster.call, ("scontrol", "update", f"NodeName={node}", "State=RESUME")).start()
        return f"{node} drained for 20 s"

    def scancel_tasks(self) -> str | None:
        tasks = self.cluster.tasks("R,PD")
        if not tasks:
            return None
        chosen = self.rng.sample(tasks, min(3, len(tasks)))
        self.cluster.call("scancel", *chosen)
        return f"scancel {' '.join(chosen)}"

    def requeue_tasks(self) -> str | None:
        tasks = self.cluster.tasks("R", older_than=5)
        if not tasks:
            return None
        chosen = self.rng.sample(tasks, min(2, len(tasks)))
        for task in chosen:
            self.cluster.call("scontrol", "requeue", task)
        return f"scontrol requeue {' '.join(chosen)}"

    def kill_driver(self) -> str | None:
        driver = self.sweep.driver
        if driver is None or driver.poll() is not None:
            return None
        os.killpg(driver.pid, signal.SIGKILL)
        return f"kill -9 of the harness run driver {driver.pid}"

    def fill_disk(self) -> str:
        filler = self.sweep.results / f".fill-{len(self.log)}"  # its own: an earlier fill may still hold
        free = os.statvfs(self.sweep.results)
        with open(filler, "wb") as out:  # bytes written, not a sparse file: the tmpfs is really full
            try:
                for _ in range(free.f_bavail * free.f_frsize // 2**20 + 1):
                    out.write(b"\0" * 2**20)
            except OSError:
                pass
        threading.Timer(15, filler.unlink, kwargs={"missing_ok": True}).start()
        return f"results filesystem full for 15 s ({free.f_bavail * free.f_frsize / 2**20:.0f} MiB filled)"


def variant(exp: Path, name: str, executor: dict) -> Path:
    """The experiment file with another executor section (the same cells, the same run ids)."""
    doc = yaml.safe_load(exp.read_text())
    doc["executor"] = executor
    path = exp.with_name(f"{name}.yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def clean_run(sweep: Sweep, log, submit_only: bool = False) -> dict:
    """The fault-free run: submission and status timed while the nodes are drained (the harness's own cost,
    not the 2 cores' contention with running cells), then every cell waited on (`submit_only`: the cells
    scancelled instead)."""
    sweep.cluster.set_nodes("DRAIN")
    start = time.time()
    nowait = variant(sweep.exp, "clean", {**yaml.safe_load(sweep.exp.read_text())["executor"], "wait": False})
    submit = subprocess.run(sweep.harness("run", str(nowait)), cwd=ROOT, env=sweep.cluster.env, stdout=log,
                            stderr=log)
    submit_s = time.time() - start
    if submit.returncode:
        raise RuntimeError(f"the fault-free submission failed (exit {submit.returncode}); see the driver log")
    status_s, calls = [], []
    for _ in range(3):
        counted = sweep.results / f"squeue-{len(status_s)}.log"
        tick = time.time()
        subprocess.run(sweep.harness("status", SWEEP), cwd=ROOT, capture_output=True,
                       env={**sweep.cluster.env, "SQUEUE_LOG": str(counted)})
        status_s.append(time.time() - tick)
        calls.append(len(counted.read_text().split()) if counted.exists() else 0)
        counted.unlink(missing_ok=True)
    sweep.cluster.set_nodes("RESUME")
    figures = {"submit_s": round(submit_s, 2), "status_s": round(statistics.median(status_s), 3),
               "squeue_calls_per_status": max(calls)}
    if submit_only:
        subprocess.run(sweep.harness("cancel", SWEEP), cwd=ROOT, env=sweep.cluster.env, stdout=log, stderr=log)
        return figures
    while sweep.sample(start) < len(sweep.run_ids):
        time.sleep(2)
    return {**figures, "wall_s": round(time.time() - start, 1)}


def local_run(sweep: Sweep, log) -> dict:
    """The fault-free reference on the local backend, one run per core: the same mIoU per run id as on SLURM
    (tests/harness/backends/test_slurm.py), without a python start-up per cell."""
    start = time.time()
    local = variant(sweep.exp, "local", {"backend": "local", "jobs": os.cpu_count()})
    driver = subprocess.Popen(sweep.harness("run", str(local)), cwd=ROOT, env=sweep.cluster.env, stdout=log,
                              stderr=log, stdin=subprocess.DEVNULL)
    while driver.poll() is None:
        sweep.sample(start)
        time.sleep(2)
    if sweep.sample(start) < len(sweep.run_ids):
        raise RuntimeError(f"the local reference run ended (exit {driver.returncode}) with cells not done")
    return {"wall_s": round(time.time() - start, 1), "backend": "local"}


def faulted_run(sweep: Sweep, gap: float, rng: random.Random, order: tuple[str, ...], log) -> dict:
    """The driver loop under faults, until every cell is done (or SIGTERM / Ctrl-C: "interrupted", the
    figures so far)."""
    start, began, restarts, interrupted = time.time(), 0.0, -1, False
    faults = Faults(sweep, start, gap, rng, order)
    faults.start()
    try:
        while sweep.sample(start) < len(sweep.run_ids):
            if sweep.driver is None or sweep.driver.poll() is not None:
                if sweep.driver is not None and time.time() - began < 10:
                    time.sleep(5)  # it found nothing to do
                restarts += 1
                began = time.time()
                sweep.start_driver(log)
            time.sleep(1)
    except KeyboardInterrupt:
        interrupted = True
    faults.stop.set()
    faults.join()
    if interrupted:
        os.killpg(sweep.driver.pid, signal.SIGKILL)
    elif sweep.driver.poll() is None:
        sweep.driver.wait(timeout=300)
    return {"wall_s": round(time.time() - start, 1), "driver_restarts": restarts, "faults": faults.log,
            "samples": sweep.samples, **({"interrupted": True} if interrupted else {})}


def check(clean: Sweep, faulted: Sweep) -> dict:
    """Every cell done exactly once (metrics.json, and at most one "done:" line in its train.log: the line can
    be lost to the full disk, a second one cannot be), and the same mIoU per run id as without faults."""
    done_lines, attempts, differ = {}, collections.Counter(), []
    for rid in faulted.run_ids:
        log = (faulted.run_dir(rid) / "train.log").read_text()
        done_lines[rid] = sum(" done: mIoU" in line for line in log.splitlines())
        attempts[faulted.store.status(rid).get("attempts", 0)] += 1
        a, b = (json.loads((s.run_dir(rid) / "metrics.json").read_text())["mIoU"] for s in (clean, faulted))
        if a != b:
            differ.append((rid, a, b))
    done = all((faulted.run_dir(rid) / "metrics.json").exists() for rid in faulted.run_ids)
    return {"done_once": done and all(n <= 1 for n in done_lines.values()),
            "done_line_lost": sorted(rid for rid, n in done_lines.items() if n == 0),
            "done_twice_or_more": sorted(rid for rid, n in done_lines.items() if n > 1),
            "attempts": dict(sorted(attempts.items())), "identical_miou": not differ, "differ": differ}


def plot(path: Path, clean: Sweep, faulted: Sweep, faults: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for sweep, label in ((clean, "fault-free"), (faulted, "under faults")):
        ax.step(*zip(*sweep.samples), where="post", label=label)
    colours = dict(zip(FAULTS, plt.get_cmap("tab10").colors))
    for kind in sorted({k for _, k, _ in faults}, key=FAULTS.index):
        times = [t for t, k, _ in faults if k == kind]
        ax.vlines(times, 0, len(faulted.run_ids), colors=colours[kind], linestyles=":", label=kind)
    ax.set_xlabel("seconds since the first submission")
    ax.set_ylabel("cells done")
    ax.set_title(f"{len(faulted.run_ids)} cells on the dev SLURM, with and without faults (this machine)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


def bench(work: Path, cells: int, nodes: int, jobs: int, gap: float, seed: int, tmpfs_mb: int,
          order: tuple[str, ...] = (), keep: bool = False, submit_only: bool = False,
          reference: str = "slurm") -> dict:
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # munged (user munge) reaches the cluster's folder through it
    cluster = Cluster(work, nodes)
    exp = work / f"{SWEEP}.yaml"
    run_ids = experiment(exp, cells, jobs)
    clean = Sweep(cluster, exp, work / "clean", run_ids)
    faulted = Sweep(cluster, exp, work / "faulted", run_ids)
    faulted.results.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_mb}m", "tmpfs", str(faulted.results)], check=True)
    try:
        cluster.up()
        with open(work / "driver.log", "ab") as log:
            if reference == "local":  # the submission timed on its own, its cells cancelled
                timed = clean_run(Sweep(cluster, exp, work / "submit", run_ids), log, submit_only=True)
                figures = {"cells": cells, "nodes": nodes, "jobs": jobs,
                           "clean": {**timed, **({} if submit_only else local_run(clean, log))}}
            else:
                figures = {"cells": cells, "nodes": nodes, "jobs": jobs,
                           "clean": {**clean_run(clean, log, submit_only), "backend": "slurm"}}
            figures["clean"]["samples"] = clean.samples  # (s, cells done): the plot's curve
            # each stage's figures kept as it ends: a 1,000-cell run takes hours
            atomic_write_json(work / "figures.json", figures)
            if submit_only:
                return figures
            figures["faulted"] = faulted_run(faulted, gap, random.Random(seed), order, log)
            atomic_write_json(work / "figures.json", figures)
        if not figures["faulted"].get("interrupted"):
            figures["check"] = check(clean, faulted)
            atomic_write_json(work / "figures.json", figures)
        plot(work / "cells_done.png", clean, faulted, figures["faulted"]["faults"])
        return figures
    finally:
        if not keep:
            cluster.down()
            subprocess.run(["umount", str(faulted.results)], capture_output=True)


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=8, help="array tasks at a time (executor.jobs)")
    parser.add_argument("--gap", type=float, default=20.0, help="mean seconds between faults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-faults"))
    parser.add_argument("--tmpfs-mb", type=int, default=3072)
    parser.add_argument("--keep", action="store_true", help="leave the cluster up and the tmpfs mounted")
    parser.add_argument("--reference", choices=("slurm", "local"), default="slurm",
                        help="where the fault-free run trains: on the dev SLURM (its wall time compares), or on the "
                             "local backend (the same mIoU in a fraction of the time; the submission is then timed "
                             "on its own)")
    parser.add_argument("--submit-only", action="store_true",
                        help="time the submission and `harness status` only, then cancel the cells")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupt)  # and SIGINT, which a shell's background job ignores
    signal.signal(signal.SIGINT, interrupt)
    figures = bench(args.work, args.cells, args.nodes, args.jobs, args.gap, args.seed, args.tmpfs_mb, keep=args.keep,
                    submit_only=args.submit_only, reference=args.reference)
    clean = figures["clean"]
    print(f"{args.cells} cells, {args.nodes} nodes, {args.jobs} tasks at a time (this machine: {os.cpu_count()} cores)")
    print(f"  submission (harness run, executor.wait false): {clean['submit_s']:.2f} s")
    print(f"  harness status of {args.cells} runs: {clean['status_s']:.3f} s, "
          f"{clean['squeue_calls_per_status']} squeue call(s)")
    if args.submit_only:
        return 0
    faulted = figures["faulted"]
    kinds = collections.Counter(kind for _, kind, _ in faulted["faults"])
    if faulted.get("interrupted"):
        print(f"  interrupted after {faulted['wall_s']:.0f} s under faults, {faulted['samples'][-1][1]} cells done "
              f"({', '.join(f'{n} {k}' for k, n in kinds.items())}); figures so far: {args.work / 'figures.json'}")
        return 1
    verdict = figures["check"]
    print(f"  wall: fault-free {clean['wall_s']:.0f} s ({clean['backend']} backend), "
          f"under faults {faulted['wall_s']:.0f} s ({faulted['driver_restarts']} driver restarts)")
    print(f"  faults: {', '.join(f'{n} {k}' for k, n in kinds.items())}")
    print(f"  every cell done exactly once: {verdict['done_once']}; attempts per cell: {verdict['attempts']}")
    print(f"  mIoU per run id identical to the fault-free run: {verdict['identical_miou']}")
    print(f"  plot: {args.work / 'cells_done.png'}; figures: {args.work / 'figures.json'}")
    return 0 if verdict["done_once"] and verdict["identical_miou"] else 1


if __name__ == "__main__":
    sys.exit(main())
