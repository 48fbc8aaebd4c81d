"""`harness run | status | cancel | report | evaluate | estimate | show | diff` over a results folder: the command
line (arguments, what is printed, exit codes); the work is done by the modules it calls."""
from __future__ import annotations

import argparse
import contextlib
import errno
import sys
import time
import traceback
from pathlib import Path

from protoseg import provenance
from protoseg.io import LinkRefused

from . import backends, launch, matrix, report_command
from .cancel import cancel
from .help_text import COMMANDS, DESCRIPTION, EXAMPLES, EXIT_CODES, HELP, LINKED_RESULTS, ONLY_HELP, TRUST_FLOCK
from .labels import settings_text
from .matrix import MAX_CELLS, MatrixError
from .selection import Selection, SelectionError, finished_runs, run_of, stored_runs
from .show import diff_text, evaluation_lines, show_lines
from .status import status_lines
from .store import ACTIVE, DISK_FULL, STALE_AFTER, Store, StoreError, check_root, sweeps


def cmd_run(args) -> int:
    overrides = matrix.parse_overrides(args.set)
    overrides += [(f"executor.{key}", getattr(args, key)) for key in backends.flags() if getattr(args, key)]
    store, sweep, planned_at = launch.load(args.file, args.results, overrides, args.profile, args.only, args.smoke,
                                           args.max_cells)
    if not args.dry_run:
        check_root(args.results, args.linked_results)
    for warning in launch.check_inputs(sweep, args.results, args.smoke, args.dry_run):
        print(f"warning: {warning}", file=sys.stderr)
    backend = backends.get(sweep.executor["backend"])
    plan = launch.plan(store, sweep.runs, args.force, args.retry_failed, sweep.executor["stale_after"],
                       follow_backend=sweep.executor["backend"] if backend.DETACHED else None)
    print("\n".join(launch.plan_lines(sweep, store, plan)))
    todo = launch.to_run(plan)
    if args.dry_run:
        print(launch.dry_run_text(sweep, store, todo, backend))
        return 0
    launch.prepare(store, sweep, plan, todo, planned_at, args.trust_flock)
    start = time.time()
    try:
        final = launch.execute(backend, store, todo, sweep.executor, launch.to_follow(plan))
    except backends.BackendUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except launch.Stopped as stop:
        if not backend.DETACHED:  # a detached backend's runs go on; it said so
            with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
                print("interrupted; run the same command again to continue", file=sys.stderr)
        return 128 + stop.signum
    print(launch.summary(store, final, start, args.smoke))
    return launch.outcome(store, plan, final)


def cmd_cancel(args) -> int:
    check_root(args.results, args.linked_results)
    cancelled, select = 0, Selection(args.only)
    for store in sweeps(args.results, matrix.sweep_name_of(args.target), backends.alive):
        rows = stored_runs(store, [r for r in store.rows(args.stale_after) if r["state"] in ACTIVE], select)
        if not rows:
            print(f"sweep {store.sweep}: nothing queued or running{' matches ' + select.text if select else ''}")
            continue
        print(f"sweep {store.sweep}: cancelling {len(rows)} run(s) (waiting up to {args.grace:.0f} s for checkpoints)")
        try:
            outcome = cancel(store, [r["run_id"] for r in rows], args.grace, args.stale_after)
        except backends.BackendUnavailable as err:
            jobs = ", ".join(sorted(str(r.get("job_id")) for r in rows if r.get("job_id")))
            print(f"error: {err}; jobs not cancelled: {jobs or 'none'} (their runs stop at their next "
                  f"iteration if they reach one: each has a cancel file)", file=sys.stderr)
            return 3
        for row in rows:
            print(f"  {row['run_id']}  {settings_text(row.get('settings', {}))}  {outcome[row['run_id']]}")
        cancelled += len(rows)
    print(f"{cancelled} run(s) cancelled; `harness run` with the same file resumes them from their checkpoints")
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def cmd_estimate(args) -> int:
    from protoseg.distributed import pick_device

    from . import estimate

    select = Selection(args.only)
    sweep = matrix.load(args.file, matrix.parse_overrides(args.set), args.profile, select=select)
    if not sweep.runs:
        raise MatrixError(f"{args.file}: {select.text} matches none of its {sweep.cells} cells")
    if not 0 < args.crop_scale <= 1:
        raise MatrixError(f"--crop-scale {args.crop_scale} is not valid; valid: a number in (0, 1]")
    store = Store(args.results, sweep.name)
    done = [] if args.all else [run for run in sweep.runs if store.is_done(run.run_id)]
    if done:
        sweep.runs = [run for run in sweep.runs if run not in done]
        print(f"{len(done)} cell(s) done in {store.dir}: left out (--all to estimate them too)")
    if not sweep.runs:
        print("nothing left to run")
        return 0
    rows = estimate.estimate(sweep, args.steps, args.iterations, args.batch, args.crop_scale)
    print(estimate.render(rows, str(pick_device(sweep.runs[0].value("train.device"))),
                          estimate.parallelism(sweep.executor, len(sweep.runs))))
    return 1 if any(r["error"] for r in rows) else 0


def cmd_status(args) -> int:
    select = Selection(args.only)
    sweep = None
    if Path(args.target or "").suffix in (".yaml", ".yml"):  # the experiment: its cells not yet created too
        store = Store(args.results, matrix.sweep_name_of(args.target), backends.alive)
        sweep = matrix.load(args.target, spec_version=store.spec_version(), select=select)
        stores = [store]
    else:
        stores = sweeps(args.results, matrix.sweep_name_of(args.target), backends.alive)
    if not stores:
        print(f"no sweeps under {args.results}")
        return 0
    while True:
        text = "\n".join(line for s in stores for line in status_lines(s, args.stale_after, select, sweep))
        if not args.watch:
            print(text)
            return 0
        sys.stdout.write("\x1b[2J\x1b[H" + time.strftime("%H:%M:%S ") + text + "\n")
        sys.stdout.flush()
        time.sleep(args.interval)


def cmd_evaluate(args) -> int:
    from protoseg.evaluate import evaluate_run

    given = {"data.root": args.root, "eval.mode": args.mode, "eval.resize": args.resize, "eval.scales": args.scales,
             "eval.flip": args.flip}
    overrides = {path: value for path, value in given.items() if value is not None}
    run_dirs = finished_runs(args.run_dir, args.results, Selection(args.only))
    failed = 0
    for run_dir in run_dirs:  # one run that cannot be scored does not stop the others
        try:
            path, metrics = evaluate_run(run_dir, args.split, overrides)
        except (ValueError, FileNotFoundError) as err:  # a bad setting, an unfinished run, data that does not read
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        print("\n".join(evaluation_lines(run_dir, path, metrics)))
    if len(run_dirs) > 1:
        print(f"\n{len(run_dirs) - failed} of {len(run_dirs)} finished run(s) scored")
    return 2 if failed else 0


def cmd_show(args) -> int:
    store, rid, row = run_of(args.results, args.run, backends.alive)
    print("\n".join(show_lines(store, rid, row, args.lines)))
    return 0


def cmd_diff(args) -> int:
    (store_a, a, _), (store_b, b, _) = (run_of(args.results, ref, backends.alive) for ref in args.runs)
    print(diff_text(store_a, a, store_b, b))
    return 0


def _version() -> str:
    commit = provenance.git_commit()
    return f"harness {provenance.version('protoseg-harness') or '(not installed)'}" + \
        (f" (commit {commit})" if commit else "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=DESCRIPTION, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name):
        p = sub.add_parser(name, help=COMMANDS[name], description=COMMANDS[name], epilog=EXAMPLES[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results/)")
        return p

    def only(p, what="select cells"):
        p.add_argument("--only", action="append", metavar="KEY=VALUE[,...]", help=ONLY_HELP.format(what=what))

    run = add("run")
    run.add_argument("file")
    run.add_argument("--dry-run", action="store_true", help="print the plan only")
    run.add_argument("--smoke", action="store_true", help=HELP["run --smoke"])
    run.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    run.add_argument("--force", action="store_true", help="rerun done cells (the old run is moved to .replaced/)")
    only(run)
    for key, flag in backends.flags().items():
        run.add_argument(f"--{key.replace('_', '-')}", **flag)
    run.add_argument("--profile", help="slurm: a cluster profile, slurm/profiles/NAME.yaml or a YAML path")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=HELP["run --set"])
    run.add_argument("--max-cells", type=_positive, default=MAX_CELLS, metavar="N", help=HELP["run --max-cells"])
    run.set_defaults(func=cmd_run)
    run.add_argument("--linked-results", action="store_true", help=LINKED_RESULTS)
    run.add_argument("--trust-flock", action="store_true", help=TRUST_FLOCK)

    status = add("status")
    status.add_argument("target", nargs="?", help=HELP["status target"])
    only(status, "select runs")
    status.add_argument("--watch", action="store_true")
    status.add_argument("--interval", type=float, default=2.0)
    status.add_argument("--stale-after", type=float, default=float(STALE_AFTER))
    status.set_defaults(func=cmd_status)

    can = add("cancel")
    can.add_argument("target", help="experiment file or sweep name")
    only(can, "select runs")
    can.add_argument("--grace", type=float, default=60.0, help=HELP["cancel --grace"])
    can.add_argument("--stale-after", type=float, default=float(STALE_AFTER))
    can.add_argument("--linked-results", action="store_true", help=LINKED_RESULTS)
    can.set_defaults(func=cmd_cancel)

    rep = add("report")
    rep.add_argument("target", nargs="?", help=HELP["report target"])
    only(rep, "select runs")
    rep.add_argument("--format", choices=("md", "latex", "csv"), default="md")
    rep.add_argument("--layout", choices=("runs", "paper"), default="runs", help=HELP["report --layout"])
    rep.add_argument("--out", help="write the table to this file")
    rep.add_argument("--plots", help="also write PNG figures to this folder")
    rep.set_defaults(func=report_command.cmd_report)

    est = add("estimate")
    est.add_argument("file")
    est.add_argument("--profile", help="a SLURM profile (slurm/profiles/NAME.yaml): processes per run, time limit")
    only(est)
    est.add_argument("--all", action="store_true", help="estimate done cells too")
    est.add_argument("--steps", type=_positive, default=3, help="timed training steps per distinct model (default 3)")
    est.add_argument("--iterations", type=_positive, help="estimate with this many iterations per cell instead")
    est.add_argument("--batch", type=_positive, help=HELP["estimate --batch"])
    est.add_argument("--crop-scale", type=float, default=1.0, metavar="F", help=HELP["estimate --crop-scale"])
    est.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for run")
    est.set_defaults(func=cmd_estimate)

    ev = add("evaluate")
    ev.add_argument("run_dir", metavar="RUN", help=HELP["evaluate RUN"])
    only(ev, "select runs of a sweep")
    ev.add_argument("--split", help="split to score (default: the run's val split)")
    ev.add_argument("--root", help="data root (default: the run's data.root)")
    ev.add_argument("--mode", choices=("whole", "slide"), help="inference (default: the run's eval.mode)")
    ev.add_argument("--resize", type=int, nargs=2, metavar=("LONG", "SHORT"), help=HELP["evaluate --resize"])
    ev.add_argument("--scales", type=float, nargs="+", help="multi-scale inference, e.g. 0.5 1.0 1.5")
    ev.add_argument("--flip", action=argparse.BooleanOptionalAction, help="also sum the flipped image's logits")
    ev.set_defaults(func=cmd_evaluate)

    show = add("show")
    show.add_argument("run", metavar="RUN", help="a run id or a prefix of one, SWEEP/ID or a run folder")
    show.add_argument("--lines", type=int, default=15, help="lines of train.log to show (default 15)")
    show.set_defaults(func=cmd_show)

    diff = add("diff")
    diff.add_argument("runs", nargs=2, metavar="RUN", help="a run id or a prefix of one, SWEEP/ID or a run folder")
    diff.set_defaults(func=cmd_diff)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MatrixError, StoreError, LinkRefused, SelectionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PermissionError as err:
        print(f"error: permission denied: {err.filename} ({err.strerror}); ask its owner for group access, "
              f"or choose another --results folder", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno in (errno.EROFS, *DISK_FULL):  # the disk, not a bug
            where = f"{err.filename}: " if err.filename else f"{args.results}: "  # a write() names no file
            print(f"error: {where}{err.strerror}; nothing finished is lost. Free space or choose a "
                  f"--results folder you can write", file=sys.stderr)
            return 2
        return _internal_error()
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug, not the user's input
        return _internal_error()


def _internal_error() -> int:
    print(f"internal error (exit 4), please report it:\n{traceback.format_exc()}", file=sys.stderr)
    return 4


if __name__ == "__main__":
    sys.exit(main())
