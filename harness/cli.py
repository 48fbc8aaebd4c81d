"""`harness run | status | cancel | report` over a results folder."""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import yaml

from protoseg.io import read_yaml

from .matrix import MatrixError, settings_text
from .store import Store


def _sweep_name(target: str) -> str:
    """A sweep name from an experiment file (its `sweep:` key, else its stem) or the name itself."""
    path = Path(target)
    if path.suffix in (".yaml", ".yml"):
        doc = read_yaml(path, "experiment file", MatrixError) or {}
        return (doc.get("sweep") if isinstance(doc, dict) else None) or path.stem
    return target


def _sweeps(results: Path, target: str | None) -> list[Store]:
    if target:
        store = Store(results, _sweep_name(target))
        if not store.dir.is_dir():
            known = sorted(p.name for p in results.iterdir() if p.is_dir() and p.name != "paper") if results.is_dir() else []
            raise MatrixError(f"no sweep '{store.sweep}' under {results}; known: {', '.join(known) or '(none)'}")
        return [store]
    if not results.is_dir():
        return []
    return [Store(results, p.name) for p in sorted(results.iterdir())
            if p.is_dir() and p.name != "paper" and (p / "sweep.json").exists()]


def _matches(spec, only: str | None) -> bool:
    """--only 'model.head=parametric,train.seed=0' or a run id prefix."""
    if not only:
        return True
    from protoseg import config

    for term in only.split(","):
        key, sep, value = term.partition("=")
        if not sep:
            if not spec.run_id.startswith(term.strip()):
                return False
            continue
        try:
            actual = config.get(spec.spec, key.strip())
        except (KeyError, TypeError):
            raise MatrixError(f"--only {only!r}: unknown spec path '{key.strip()}'") from None
        if actual != yaml.safe_load(value):
            return False
    return True


def _plan(store: Store, runs, args, stale_after) -> list[tuple[object, str]]:
    plan = []
    for spec in runs:
        state = store.state(spec.run_id, stale_after)
        if state == "done":
            action = "rerun" if args.force else "skip (done)"
        elif state in ("running", "queued"):
            status = store.status(spec.run_id)
            job = status.get("job_id") if status.get("backend") == "slurm" else None
            action = f"skip ({state}{' as SLURM job ' + job if job else ' elsewhere'})"
        elif state == "failed":
            action = ("resume" if store.has_checkpoint(spec.run_id) else "run") if args.retry_failed \
                else "skip (failed; --retry-failed)"
        else:
            action = "resume" if store.has_checkpoint(spec.run_id) else "run"
        plan.append((spec, action))
    return plan


def cmd_run(args) -> int:
    from . import backends, matrix, report

    overrides = matrix.parse_overrides(args.set)
    if args.backend:
        overrides.append(("executor.backend", args.backend))
    if args.jobs:
        overrides.append(("executor.jobs", args.jobs))
    if args.address:
        overrides.append(("executor.address", args.address))
    sweep = matrix.load(args.file, overrides, args.profile)
    runs = [r for r in sweep.runs if _matches(r, args.only)]
    store = Store(args.results, sweep.name)
    stale_after = sweep.executor["stale_after"]
    plan = _plan(store, runs, args, stale_after)
    width = max((len(settings_text(r.settings)) for r in runs), default=0)
    print(f"sweep {sweep.name}: {len(sweep.runs)} cells, {len(runs)} selected -> {store.dir}")
    for spec, action in plan:
        print(f"  {spec.run_id}  {settings_text(spec.settings):<{width}}  {action}")
    todo = [spec for spec, action in plan if action in ("run", "resume", "rerun")]
    if args.dry_run:
        print(f"dry run: {len(todo)} would run")
        if sweep.executor["backend"] == "slurm" and todo:
            from .backends import slurm

            try:
                print("\nthe sbatch file:\n" + slurm.sbatch_script(sweep.executor, store.dir / ".slurm", len(todo),
                                                                 slurm.job_name(store)))
            except backends.BackendUnavailable as err:
                print(f"(no sbatch file: {err})")
        return 0
    store.record_sweep(args.file, matrix.git_commit(), sweep.executor, [r.run_id for r in sweep.runs])
    for spec in sweep.runs:
        store.prepare(spec.run_id, spec.spec, spec.settings)
    for spec, action in plan:
        if action == "rerun":  # keep the old result: move it aside, never delete it
            aside = store.dir / ".replaced" / f"{spec.run_id}-{int(time.time())}"
            aside.parent.mkdir(exist_ok=True)
            shutil.move(str(store.run_dir(spec.run_id)), str(aside))
            store.prepare(spec.run_id, spec.spec, spec.settings)
    for spec in todo:  # an old `harness cancel` request must not stop the new attempt
        store.cancel_path(spec.run_id).unlink(missing_ok=True)
    run_backend = backends.get(sweep.executor["backend"])
    start = time.time()
    try:
        final = run_backend(store, todo, sweep.executor) if todo else {}
    except backends.BackendUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        if sweep.executor["backend"] != "slurm":  # SLURM jobs go on; the backend said so
            print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    failed = [rid for rid, state in final.items() if state == "failed"]
    counts = {s: list(final.values()).count(s) for s in dict.fromkeys(final.values())}
    print(f"\n{len(final)} run(s) in {time.time() - start:.0f}s: "
          + ", ".join(f"{n} {s}" for s, n in counts.items()) if final else "\nnothing to run")
    for rid in failed:
        print(f"  failed {rid}: {store.status(rid).get('error')}  (traceback: {store.run_dir(rid) / 'error.txt'})")
    frame = report.load_runs([store.dir])
    if not frame.empty:
        agg = report.aggregate(frame)
        print("\n" + report.render(agg, "md", report.caption(frame)))
    return min(len(failed), 125)


def _status_lines(store: Store, stale_after: float) -> list[str]:
    rows = sorted(store.rows(stale_after), key=lambda r: settings_text(r.get("settings", {})))
    width = max((len(settings_text(r.get("settings", {}))) for r in rows), default=0)
    lines = [f"sweep {store.sweep} ({store.dir})"]
    counts: dict[str, int] = {}
    for row in rows:
        state = row["state"]
        counts[state] = counts.get(state, 0) + 1
        progress = ""
        if state == "running" and row.get("progress"):
            p = row["progress"]
            progress = f"{p['iteration']}/{p['iterations']}"
        miou = f"mIoU {row['mIoU']:.2f}" if state == "done" and row.get("mIoU") is not None else ""
        error = (row.get("error") or "")[:80] if state in ("failed", "crashed", "cancelled") else ""
        job = f"job {row['job_id']}" if row.get("job_id") and state != "done" else ""
        if row.get("log") and state != "done":
            job += f" log {_short(row['log'])}"
        lines.append(f"  {row['run_id']}  {settings_text(row.get('settings', {})):<{width}}  {state:<9} "
                     f"{progress:>9} {miou:>11} {job} {error}".rstrip())
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines.append(f"{len(rows)} runs: {summary or 'none'}")
    return lines


def _short(path: str) -> str:
    """A path relative to the current folder when it is below it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def cmd_cancel(args) -> int:
    from . import slurm_jobs
    from .cancel import cancel
    from .matrix import RunSpec
    from .store import ACTIVE, load_spec

    cancelled = 0
    for store in _sweeps(args.results, args.target):
        rows = [r for r in store.rows(args.stale_after) if r["state"] in ACTIVE]
        rows = [r for r in rows if _matches(RunSpec(r["run_id"], load_spec(store.run_dir(r["run_id"]))), args.only)]
        if not rows:
            print(f"sweep {store.sweep}: nothing queued or running{' matches --only ' + args.only if args.only else ''}")
            continue
        print(f"sweep {store.sweep}: cancelling {len(rows)} run(s) (waiting up to {args.grace:.0f} s for checkpoints)")
        try:
            outcome = cancel(store, [r["run_id"] for r in rows], args.grace, args.stale_after)
        except slurm_jobs.SlurmUnavailable as err:
            jobs = ", ".join(sorted(str(r.get("job_id")) for r in rows if r.get("job_id")))
            print(f"error: {err}; SLURM jobs not cancelled: {jobs or 'none'} (their runs stop at their next "
                  f"iteration if they reach one: each has a cancel file)", file=sys.stderr)
            return 3
        for row in rows:
            print(f"  {row['run_id']}  {settings_text(row.get('settings', {}))}  {outcome[row['run_id']]}")
        cancelled += len(rows)
    print(f"{cancelled} run(s) cancelled; `harness run` with the same file resumes them from their checkpoints")
    return 0


def cmd_status(args) -> int:
    stores = _sweeps(args.results, args.target)
    if not stores:
        print(f"no sweeps under {args.results}")
        return 0
    while True:
        text = "\n".join(line for s in stores for line in _status_lines(s, args.stale_after))
        if not args.watch:
            print(text)
            return 0
        sys.stdout.write("\x1b[2J\x1b[H" + time.strftime("%H:%M:%S ") + text + "\n")
        sys.stdout.flush()
        time.sleep(args.interval)


def cmd_report(args) -> int:
    from . import report

    stores = _sweeps(args.results, args.target)
    frame = report.load_runs([s.dir for s in stores])
    if frame.empty:
        print("no finished runs (no metrics.json) to report", file=sys.stderr)
        return 1
    agg = report.aggregate(frame)
    text = report.render(agg, args.format, report.caption(frame))
    if args.out:
        from protoseg.io import atomic_write_text

        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text)
    if args.plots:
        from . import plots

        frame = report.sorted_runs(frame)
        frame["method"] = report.method_labels(frame)
        for path in plots.all_figures(frame, args.results.resolve(), Path(args.plots)):
            print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="ProtoSeg sweeps: run, status, cancel, report")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results/)")
        return p

    run = add("run", "run every cell of an experiment file that is not done")
    run.add_argument("file")
    run.add_argument("--dry-run", action="store_true", help="print the plan only")
    run.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    run.add_argument("--force", action="store_true", help="rerun done cells (the old run is moved to .replaced/)")
    run.add_argument("--only", help="key.path=value[,...] or a run id prefix")
    run.add_argument("--backend", choices=("local", "slurm", "ray"))
    run.add_argument("--jobs", type=int, help="runs at once (local workers, Ray concurrent trials)")
    run.add_argument("--address", help="ray backend: an existing cluster ('auto' or ray://host:port)")
    run.add_argument("--profile", help="slurm: a cluster profile, slurm/profiles/NAME.yaml or a YAML path")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override executor.<key> or base.<spec path>")
    run.set_defaults(func=cmd_run)

    status = add("status", "one line per run and a summary")
    status.add_argument("target", nargs="?", help="experiment file or sweep name (default: all)")
    status.add_argument("--watch", action="store_true")
    status.add_argument("--interval", type=float, default=2.0)
    status.add_argument("--stale-after", type=float, default=120.0)
    status.set_defaults(func=cmd_status)

    can = add("cancel", "stop a sweep's queued and running runs at a checkpoint (scancel on SLURM)")
    can.add_argument("target", help="experiment file or sweep name")
    can.add_argument("--only", help="key.path=value[,...] or a run id prefix")
    can.add_argument("--grace", type=float, default=60.0,
                     help="seconds a running run gets to write its checkpoint before scancel (default 60)")
    can.add_argument("--stale-after", type=float, default=120.0)
    can.set_defaults(func=cmd_cancel)

    rep = add("report", "paper-style table of a sweep")
    rep.add_argument("target", nargs="?", help="experiment file or sweep name (default: all)")
    rep.add_argument("--format", choices=("md", "latex", "csv"), default="md")
    rep.add_argument("--out", help="write the table to this file")
    rep.add_argument("--plots", help="also write PNG figures to this folder")
    rep.set_defaults(func=cmd_report)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MatrixError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
