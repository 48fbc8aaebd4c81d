"""`harness run | status | cancel | report | evaluate | estimate | show | diff` over a results folder: the command
line (arguments, what is printed, exit codes); the work is done by the modules it calls."""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import time
import traceback
from pathlib import Path

from protoseg import provenance
from protoseg.io import LinkRefused

from . import backends, launch, matrix, report_command, smoke
from .help_text import EXAMPLES, EXIT_CODES, LINKED_RESULTS, ONLY_HELP
from .labels import settings_text
from .matrix import MAX_CELLS, MatrixError
from .selection import Selection, SelectionError, finished_runs, one_run, stored_runs
from .show import diff_text, evaluation_lines, show_lines
from .status import status_lines
from .store import Store, StoreError, sweeps


def cmd_run(args) -> int:
    overrides = matrix.parse_overrides(args.set)
    if args.backend:
        overrides.append(("executor.backend", args.backend))
    if args.jobs:
        overrides.append(("executor.jobs", args.jobs))
    if args.address:
        overrides.append(("executor.address", args.address))
    name = matrix.sweep_name_of(args.file)
    store = Store(args.results, smoke.name(name) if args.smoke else name, backends.alive)
    planned_at = store.spec_version()
    select = Selection(args.only)
    sweep = matrix.load(args.file, overrides, args.profile, select=select, spec_version=planned_at,
                        smoke_results=args.results if args.smoke else None, max_cells=args.max_cells)
    if not sweep.runs:
        raise MatrixError(f"{args.file}: {select.text} matches none of its {sweep.cells} cells; nothing done")
    if not args.dry_run:
        _refuse_linked_root(args)
    if args.smoke and not args.dry_run:
        smoke.write_data(args.results, {run.value("data.dataset") for run in sweep.runs})
    if not (args.smoke and args.dry_run):  # a smoke dry run writes no fixture to check
        for warning in matrix.check_inputs(sweep, args.dry_run):
            print(f"warning: {warning}", file=sys.stderr)
    plan = launch.plan(store, sweep.runs, args.force, args.retry_failed, sweep.executor["stale_after"])
    print("\n".join(launch.plan_lines(sweep, store, plan)))
    todo = launch.to_run(plan)
    backend = backends.get(sweep.executor["backend"])
    if args.dry_run:
        print(launch.dry_run_text(sweep, store, todo, backend))
        return 0
    launch.prepare(store, sweep, plan, todo, planned_at)
    start = time.time()
    try:
        final = launch.execute(backend, store, todo, sweep.executor)
    except backends.BackendUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except launch.Stopped as stop:
        if not backend.DETACHED:  # a detached backend's runs go on; it said so
            with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
                print("interrupted; run the same command again to continue", file=sys.stderr)
        return 128 + stop.signum
    launch.summary(store, final, start, args.smoke)
    return launch.outcome(store, plan, final)


def cmd_cancel(args) -> int:
    from .backends import BackendUnavailable
    from .cancel import cancel
    from .store import ACTIVE

    _refuse_linked_root(args)
    cancelled, select = 0, Selection(args.only)
    for store in sweeps(args.results, matrix.sweep_name_of(args.target), backends.alive):
        rows = stored_runs(store, [r for r in store.rows(args.stale_after) if r["state"] in ACTIVE], select)
        if not rows:
            print(f"sweep {store.sweep}: nothing queued or running{' matches ' + select.text if select else ''}")
            continue
        print(f"sweep {store.sweep}: cancelling {len(rows)} run(s) (waiting up to {args.grace:.0f} s for checkpoints)")
        try:
            outcome = cancel(store, [r["run_id"] for r in rows], args.grace, args.stale_after)
        except BackendUnavailable as err:
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
    from protoseg.engine import pick_device

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

    overrides = {path: value for path, value in (("data.root", args.root), ("eval.mode", args.mode),
                                                 ("eval.resize", args.resize), ("eval.scales", args.scales),
                                                 ("eval.flip", args.flip))
                 if value is not None}
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


def _run_of(results: Path, reference: str) -> tuple[Store, str, dict]:
    """(store, run id, its status row) of the run a reference names."""
    folder = one_run(results, reference).resolve()
    store = Store(folder.parent.parent, folder.parent.name, backends.alive)
    row = next(r for r in store.rows() if r["run_id"] == folder.name)
    return store, folder.name, row


def cmd_show(args) -> int:
    store, rid, row = _run_of(args.results, args.run)
    print("\n".join(show_lines(store, rid, row, args.lines)))
    return 0


def cmd_diff(args) -> int:
    (store_a, a, _), (store_b, b, _) = (_run_of(args.results, ref) for ref in args.runs)
    print(diff_text(store_a, a, store_b, b))
    return 0


def _refuse_linked_root(args) -> None:
    if args.results.is_symlink() and not args.linked_results:
        raise StoreError(f"--results {args.results} is a symbolic link (to {os.readlink(args.results)}); pass "
                         f"--linked-results to write through it (links inside it stay refused), or name its target")


def _version() -> str:
    commit = provenance.git_commit()
    return f"harness {provenance.version('protoseg-harness') or '(not installed)'}" + \
        (f" (commit {commit})" if commit else "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="ProtoSeg sweeps: run, status, cancel, report, "
                                     "estimate, evaluate, show, diff", epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results/)")
        return p

    def only(p, what="select cells"):
        p.add_argument("--only", action="append", metavar="KEY=VALUE[,...]", help=ONLY_HELP.replace("select cells", what))

    run = add("run", "run every cell of an experiment file that is not done")
    run.add_argument("file")
    run.add_argument("--dry-run", action="store_true", help="print the plan only")
    run.add_argument("--smoke", action="store_true",
                     help="every cell end to end on CPU in minutes: generated data in each dataset's layout, tiny "
                          "crops and iterations, real architectures; into the sweep <name>-smoke")
    run.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    run.add_argument("--force", action="store_true", help="rerun done cells (the old run is moved to .replaced/)")
    only(run)
    run.add_argument("--backend", choices=backends.NAMES)
    run.add_argument("--jobs", type=int, help="runs at once (local workers, Ray concurrent trials)")
    run.add_argument("--address", help="ray backend: an existing cluster ('auto' or ray://host:port)")
    run.add_argument("--profile", help="slurm: a cluster profile, slurm/profiles/NAME.yaml or a YAML path")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override executor.<key> or base.<spec path>")
    run.add_argument("--max-cells", type=_positive, default=MAX_CELLS, metavar="N",
                     help=f"refuse a matrix of more cells, counted from its axes before expanding it "
                          f"(default {MAX_CELLS:,})")
    run.set_defaults(func=cmd_run)
    run.add_argument("--linked-results", action="store_true", help=LINKED_RESULTS)

    status = add("status", "one line per run and a summary")
    status.add_argument("target", nargs="?", help="experiment file (its cells not created yet are listed too) or "
                                                  "sweep name (default: every sweep)")
    only(status, "select runs")
    status.add_argument("--watch", action="store_true")
    status.add_argument("--interval", type=float, default=2.0)
    status.add_argument("--stale-after", type=float, default=120.0)
    status.set_defaults(func=cmd_status)

    can = add("cancel", "stop a sweep's queued and running runs at a checkpoint (scancel on SLURM)")
    can.add_argument("target", help="experiment file or sweep name")
    only(can, "select runs")
    can.add_argument("--grace", type=float, default=60.0,
                     help="seconds a running run gets to write its checkpoint before scancel (default 60)")
    can.add_argument("--stale-after", type=float, default=120.0)
    can.add_argument("--linked-results", action="store_true", help=LINKED_RESULTS)
    can.set_defaults(func=cmd_cancel)

    rep = add("report", "paper-style table of a sweep (each sweep on its own when none is named)")
    rep.add_argument("target", nargs="?", help="experiment file (its cells not created yet are counted as missing) "
                                               "or sweep name (default: every sweep, one table each)")
    only(rep, "select runs")
    rep.add_argument("--format", choices=("md", "latex", "csv"), default="md")
    rep.add_argument("--layout", choices=("runs", "paper"), default="runs",
                     help="runs: one row per backbone x method, every column (default); paper: the paper's Tables "
                          "1-2, baseline and Ours rows per backbone, ours beside the paper's numbers (md or latex)")
    rep.add_argument("--out", help="write the table to this file")
    rep.add_argument("--plots", help="also write PNG figures to this folder")
    rep.set_defaults(func=report_command.cmd_report)

    est = add("estimate", "time each distinct model of an experiment's cells not done yet: wall time per cell, "
                          "device-hours, wall-clock at the sweep's parallelism")
    est.add_argument("file")
    est.add_argument("--profile", help="a SLURM profile (slurm/profiles/NAME.yaml): processes per run, time limit")
    only(est)
    est.add_argument("--all", action="store_true", help="estimate done cells too")
    est.add_argument("--steps", type=_positive, default=3, help="timed training steps per distinct model (default 3)")
    est.add_argument("--iterations", type=_positive, help="estimate with this many iterations per cell instead")
    est.add_argument("--batch", type=_positive, help="time at this per-device batch and scale per image to the cell's "
                                               "(on a CPU: 2, so that big models fit and table2 takes minutes)")
    est.add_argument("--crop-scale", type=float, default=1.0, metavar="F",
                     help="time at each crop side x F (0 < F <= 1) and scale per pixel (on a CPU: 0.5)")
    est.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for run")
    est.set_defaults(func=cmd_estimate)

    ev = add("evaluate", "score a finished run's (or a sweep's finished runs') final weights on a split, data "
                         "root or protocol")
    ev.add_argument("run_dir", metavar="RUN",
                    help="a finished run: its id or a prefix of one, SWEEP/ID or its folder; or a sweep (name or "
                         "folder): all its finished runs")
    only(ev, "select runs of a sweep")
    ev.add_argument("--split", help="split to score (default: the run's val split)")
    ev.add_argument("--root", help="data root (default: the run's data.root)")
    ev.add_argument("--mode", choices=("whole", "slide"), help="inference (default: the run's eval.mode)")
    ev.add_argument("--resize", type=int, nargs=2, metavar=("LONG", "SHORT"),
                    help="rescale each image into a LONG x SHORT box first, keeping its ratio (ADE20K: 2048 512)")
    ev.add_argument("--scales", type=float, nargs="+", help="multi-scale inference, e.g. 0.5 1.0 1.5")
    ev.add_argument("--flip", action=argparse.BooleanOptionalAction, help="also sum the flipped image's logits")
    ev.set_defaults(func=cmd_evaluate)

    show = add("show", "one run: its settings, state, provenance (code commit, library versions), log tail, error")
    show.add_argument("run", metavar="RUN", help="a run id or a prefix of one, SWEEP/ID or a run folder")
    show.add_argument("--lines", type=int, default=15, help="lines of train.log to show (default 15)")
    show.set_defaults(func=cmd_show)

    diff = add("diff", "the spec fields in which two runs differ")
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
        if err.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT):  # the disk, not a bug
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
