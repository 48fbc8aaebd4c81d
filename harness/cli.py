"""`harness run | status | cancel | report | evaluate | estimate` over a results folder."""
from __future__ import annotations

import argparse
from collections import Counter
import contextlib
import errno
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from protoseg import config, provenance
from protoseg.io import LinkRefused, load_yaml, read_yaml

from . import backends, smoke
from .labels import settings_text
from .matrix import MAX_CELLS, MatrixError
from .selection import Selection, SelectionError, StoredRun, one_run, spec_fields
from .store import SWEEP_NAME, Store, StoreError, check_locking, load_spec


def _sweep_name(target: str) -> str:
    """A sweep name from an experiment file (its `sweep:` key, else its stem) or the name itself."""
    path = Path(target)
    if path.suffix in (".yaml", ".yml"):
        from .matrix import sweep_name

        doc = read_yaml(path, "experiment file", MatrixError)
        return sweep_name(doc if isinstance(doc, dict) else {}, str(path))
    return target


def _sweeps(results: Path, target: str | None) -> list[Store]:
    if target:
        store = Store(results, _sweep_name(target), backends.alive)
        if not store.dir.is_dir():
            known = sorted(p.name for p in results.iterdir() if p.is_dir() and p.name != "paper"
                           and not p.name.startswith(".")) if results.is_dir() else []
            raise MatrixError(f"no sweep '{store.sweep}' under {results}; known: {', '.join(known) or '(none)'}")
        return [store]
    if not results.is_dir():
        return []
    return [Store(results, p.name, backends.alive) for p in sorted(results.iterdir())
            if p.is_dir() and SWEEP_NAME.match(p.name) and p.name != "paper" and (p / "sweep.json").exists()]


def _stored_runs(store: Store, rows: list[dict], select: Selection) -> list[dict]:
    """The rows whose run the selection keeps (each run's spec.yaml read only when there is a selection)."""
    if not select:
        return rows
    kept = []
    for row in rows:
        try:
            spec = load_spec(store.run_dir(row["run_id"]))
        except StoreError:
            continue  # no readable spec: it cannot be said to match
        if select(StoredRun(row["run_id"], spec or {}, row.get("settings"))):
            kept.append(row)
    return kept


def _plan(store: Store, runs, args, stale_after) -> list[tuple[object, str]]:
    plan, existing = [], set(store.run_ids())
    for spec in runs:
        state = store.state(spec.run_id, stale_after) if spec.run_id in existing else "pending"
        if state == "done":
            action = "rerun" if args.force else "skip (done)"
        elif state in ("running", "queued"):
            status = store.status(spec.run_id)
            job = f" as {status.get('backend', '').upper()} job {status['job_id']}" if status.get("job_id") else ""
            action = f"skip ({state}{job or ' elsewhere'})"
        elif state == "failed":
            action = ("resume" if store.has_checkpoint(spec.run_id) else "run") if args.retry_failed \
                else "skip (failed; --retry-failed)"
        else:
            action = "resume" if spec.run_id in existing and store.has_checkpoint(spec.run_id) else "run"
            if state == "corrupt":
                action += f" (corrupt {_corrupt_text(store, spec.run_id)}: set aside)"
        plan.append((spec, action))
    return plan


def cmd_run(args) -> int:
    from . import matrix, report

    overrides = matrix.parse_overrides(args.set)
    if args.backend:
        overrides.append(("executor.backend", args.backend))
    if args.jobs:
        overrides.append(("executor.jobs", args.jobs))
    if args.address:
        overrides.append(("executor.address", args.address))
    name = _sweep_name(args.file)
    store = Store(args.results, smoke.name(name) if args.smoke else name, backends.alive)
    planned_at = store.spec_version()
    select = Selection(args.only)
    sweep = matrix.load(args.file, overrides, args.profile, select=select, spec_version=planned_at,
                        smoke_results=args.results if args.smoke else None, max_cells=args.max_cells)
    runs = sweep.runs
    if not runs:
        raise MatrixError(f"{args.file}: {select.text} matches none of its {sweep.cells} cells; nothing done")
    if not args.dry_run:
        _refuse_linked_root(args)
    if args.smoke and not args.dry_run:
        smoke.write_data(args.results, {run.value("data.dataset") for run in runs})
    if not (args.smoke and args.dry_run):  # a smoke dry run writes no fixture to check
        for warning in matrix.check_inputs(sweep, args.dry_run):
            print(f"warning: {warning}", file=sys.stderr)
    stale_after = sweep.executor["stale_after"]
    plan = _plan(store, runs, args, stale_after)
    width = max((len(settings_text(r.settings)) for r in runs), default=0)
    lines = [f"sweep {sweep.name}: {sweep.cells} cells, {len(runs)} selected -> {store.dir}"]
    lines += [f"  {spec.run_id}  {settings_text(spec.settings):<{width}}  {action}" for spec, action in plan]
    print("\n".join(lines))
    todo = [spec for spec, action in plan if action.split()[0] in ("run", "resume", "rerun")]
    backend = backends.get(sweep.executor["backend"])
    if args.dry_run:
        print(f"dry run: {len(todo)} would run (the matrix: {sweep.product} cells before exclude and "
              f"duplicates)")
        if todo:
            try:
                print("\n" + backend.describe(store, todo, sweep.executor))
            except backends.BackendUnavailable as err:
                print(f"({sweep.executor['backend']}: {err})")
        return 0
    linked = store.links([spec.run_id for spec in todo])
    if linked:
        more = f" (and {len(linked) - 1} more link(s) there)" if len(linked) > 1 else ""
        raise StoreError(f"{linked[0]} is a symbolic link (to {os.readlink(linked[0])}); nothing is written "
                         f"through links in a results folder: replace it with a real one or remove it{more}")
    check_locking(store.dir)
    store.record_sweep(args.file, provenance.git_commit(), sweep.executor, [r.run_id for r in runs],
                       planned_at or config.SPEC_VERSION)
    for spec, action in plan:
        if action == "rerun":  # keep the old result: move it aside, never delete it
            aside = store.dir / ".replaced" / f"{spec.run_id}-{int(time.time())}"
            aside.parent.mkdir(exist_ok=True)
            shutil.move(str(store.run_dir(spec.run_id)), str(aside))
        elif "corrupt" in action:
            store.set_aside_corrupt(spec.run_id)
    for spec in todo:
        store.prepare(spec.run_id, spec.spec, spec.settings)
        store.cancel_path(spec.run_id).unlink(missing_ok=True)  # an old `harness cancel` must not stop it
    start = time.time()
    received: list[int] = []
    try:
        with _signals_interrupt(received):
            final = backend.wait(backend.submit(store, todo, sweep.executor)) if todo else {}
    except backends.BackendUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        if not backend.DETACHED:  # a detached backend's runs go on; it said so
            with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
                print("interrupted; run the same command again to continue", file=sys.stderr)
        return 128 + (received[0] if received else signal.SIGINT)
    if args.smoke:
        freed = smoke.drop_checkpoints(store, [rid for rid, state in final.items() if state == "done"])
        print(f"smoke: removed the finished runs' checkpoints ({freed / 2**30:.1f} GiB)")
    counts = {s: list(final.values()).count(s) for s in dict.fromkeys(final.values())}
    print(f"\n{len(final)} run(s) in {time.time() - start:.0f}s: "
          + ", ".join(f"{n} {s}" for s, n in counts.items()) if final else "\nnothing to run")
    frame = report.load_runs([store.dir])
    if not frame.empty:
        agg = report.aggregate(frame)
        print("\n" + report.render(agg, "md", report.caption(frame, agg)))
        sizes = smoke.sizes_against_paper(frame, report.load_references().get("paper", [])) if args.smoke else ""
        if sizes:  # the check that the cells are the paper's models, before a cluster trains them
            print("\n" + sizes)
    return _outcome(store, plan, final)


def _outcome(store: Store, plan, final: dict[str, str]) -> int:
    """Exit code 1 and one line per cell when a selected cell failed, crashed or is corrupt (the runs'
    final states, and the failed ones the plan skipped); else 0."""
    bad = [(spec, "failed" if action.startswith("skip (failed") else final.get(spec.run_id))
           for spec, action in plan]
    bad = [(spec, state) for spec, state in bad if state in ("failed", "crashed", "corrupt")]
    if not bad:
        return 0
    print(f"\n{len(bad)} of {len(plan)} selected cell(s) failed or crashed:", file=sys.stderr)
    for spec, state in bad:
        status = store.status(spec.run_id)
        where = f"  (traceback: {store.run_dir(spec.run_id) / 'error.txt'})" if state == "failed" else ""
        print(f"  {state} {spec.run_id} {settings_text(spec.settings)}: {status.get('error')}{where}", file=sys.stderr)
    return 1


@contextlib.contextmanager
def _signals_interrupt(received: list[int]):
    """SIGTERM and SIGHUP (a batch system, `timeout`, a dropped ssh session) stop the sweep as Ctrl-C
    does: running runs write a checkpoint. The signal's number goes into `received`."""
    def interrupt(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _status_lines(store: Store, stale_after: float, select: Selection, sweep=None) -> list[str]:
    """One line per run of the store (the selected ones), and, given the experiment (`sweep`), one per
    cell not yet created; then the counts."""
    rows = store.rows(stale_after)
    if sweep is not None:
        planned = {run.run_id: run for run in sweep.runs}
        for row in rows:  # the experiment's axes name a run better than the spec fields that vary
            if row["run_id"] in planned:
                row["settings"] = planned[row["run_id"]].settings
        existing = {row["run_id"] for row in rows}
        new = [{"run_id": run.run_id, "settings": run.settings, "state": "new"}
               for run in sweep.runs if run.run_id not in existing]
        rows = _stored_runs(store, rows, select) + new  # sweep.runs holds only the selected cells already
    else:
        rows = _stored_runs(store, rows, select)
    rows.sort(key=lambda r: settings_text(r.get("settings", {})))
    width = max((len(settings_text(r.get("settings", {}))) for r in rows), default=0)
    lines = [f"sweep {store.sweep} ({store.dir}){' ' + select.text if select else ''}"]
    counts: dict[str, int] = {}
    for row in rows:
        state = row["state"]
        counts[state] = counts.get(state, 0) + 1
        progress = ""
        if state == "running" and row.get("progress"):
            p = row["progress"]
            progress = f"{p['iteration']}/{p['iterations']}"
            if p.get("phase") not in (None, "training"):  # after the last iteration: what takes the time now
                progress += f" {p['phase']}"
        miou = f"mIoU {row['mIoU']:.2f}" if state == "done" and row.get("mIoU") is not None else ""
        error = (row.get("error") or "")[:80] if state in ("failed", "crashed", "cancelled") else ""
        if state == "corrupt":
            error = f"corrupt {_corrupt_text(store, row['run_id'])}: `harness run` redoes it"
        if state == "new":
            error = "not created yet: `harness run` starts it"
        job = f"job {row['job_id']}" if row.get("job_id") and state != "done" else ""
        if row.get("log") and state != "done":
            job += f" log {_short(row['log'])}"
        lines.append(f"  {row['run_id']}  {settings_text(row.get('settings', {})):<{width}}  {state:<9} "
                     f"{progress:>9} {miou:>11} {job} {error}".rstrip())
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines.append(f"{len(rows)} runs: {summary or 'none'}")
    return lines


def _corrupt_text(store: Store, run_id: str) -> str:
    return ", ".join(f"{name} ({why})" for name, why in store.corrupt_files(run_id).items())


def _short(path: str) -> str:
    """A path relative to the current folder when it is below it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def cmd_cancel(args) -> int:
    from .backends import BackendUnavailable
    from .cancel import cancel
    from .store import ACTIVE

    _refuse_linked_root(args)
    cancelled, select = 0, Selection(args.only)
    for store in _sweeps(args.results, args.target):
        rows = _stored_runs(store, [r for r in store.rows(args.stale_after) if r["state"] in ACTIVE], select)
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
    from . import estimate, matrix

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
        from . import matrix

        store = Store(args.results, _sweep_name(args.target), backends.alive)
        sweep = matrix.load(args.target, spec_version=store.spec_version(), select=select)
        stores = [store]
    else:
        stores = _sweeps(args.results, args.target)
    if not stores:
        print(f"no sweeps under {args.results}")
        return 0
    while True:
        text = "\n".join(line for s in stores for line in _status_lines(s, args.stale_after, select, sweep))
        if not args.watch:
            print(text)
            return 0
        sys.stdout.write("\x1b[2J\x1b[H" + time.strftime("%H:%M:%S ") + text + "\n")
        sys.stdout.flush()
        time.sleep(args.interval)


def cmd_report(args) -> int:
    import pandas as pd

    from . import report

    if args.layout == "paper" and args.format == "csv":
        print("error: --layout paper writes md or latex; --format csv writes the runs' aggregate (--layout runs)",
              file=sys.stderr)
        return 2
    select = Selection(args.only)
    planned = None
    if Path(args.target or "").suffix in (".yaml", ".yml"):  # its cells not created yet count as missing
        from . import matrix

        planned = matrix.load(args.target, spec_version=Store(args.results, _sweep_name(args.target)).spec_version(),
                              select=select)
    stores = _sweeps(args.results, args.target)
    sections, tables = [], []  # each sweep on its own: a smoke sweep never beside a real one
    for store in stores:
        frame = _report_frame(store, select, planned)
        finished = frame[frame["mIoU"].notna()] if "mIoU" in frame else frame.iloc[:0]
        if finished.empty:
            continue
        missing = _missing_text(store, frame, finished)
        if args.layout == "paper":
            from . import paper_layout

            text = paper_layout.render(finished, args.format)
        else:
            agg = report.aggregate(frame)
            tables.append(agg.assign(sweep=store.sweep))
            text = report.render(agg, args.format, report.caption(finished, agg))
        if missing:
            text += f"\n% {missing}\n" if args.format == "latex" else f"\n\n{missing}\n" if args.format == "md" else ""
            if args.format == "csv":
                print(f"sweep {store.sweep}: {missing}", file=sys.stderr)
        sections.append((store, finished, text))
    if not sections:
        print(f"no finished runs (no metrics.json) to report{' match ' + select.text if select else ''}",
              file=sys.stderr)
        return 1
    if args.format == "csv":
        text = pd.concat(tables).to_csv(index=False)
    elif len(sections) == 1:
        text = sections[0][2]
    else:
        heading = "%% sweep {}\n" if args.format == "latex" else "## sweep {}\n\n"
        text = "\n\n".join(heading.format(store.sweep) + part for store, _, part in sections)
    if args.out:
        from protoseg.io import atomic_write_text

        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text)
    if args.plots:
        from . import plots

        for store, finished, _ in sections:
            finished = report.sorted_runs(finished)
            finished["method"] = report.method_labels(finished)
            out = Path(args.plots) / (store.sweep if len(sections) > 1 else "")
            for path in plots.all_figures(finished, args.results.resolve(), out):
                print(f"wrote {path}")
    return 0


def _report_frame(store: Store, select: Selection, planned=None):
    """Every run of the sweep that the selection keeps, unfinished ones with their spec only, and the
    experiment's cells not created yet (`planned`)."""
    import pandas as pd

    from . import report

    frame = report.load_runs([store.dir], unfinished=True)
    if select and not frame.empty:
        rows = [{"run_id": rid} for rid in frame["run_id"]]
        keep = {row["run_id"] for row in _stored_runs(store, rows, select)}
        frame = frame[frame["run_id"].isin(keep)]
    if planned is not None:
        existing = set(frame.get("run_id", []))
        new = [report.spec_row(store.sweep, run.run_id, run.spec) for run in planned.runs
               if run.run_id not in existing]
        frame = pd.concat([frame, pd.DataFrame(new)], ignore_index=True) if new else frame
    return frame


def _missing_text(store: Store, frame, finished) -> str:
    """'Not finished: 2 of 6 runs (1 running, 1 not created yet): ...', or '' when every run is done."""
    waiting = frame[~frame["run_id"].isin(set(finished["run_id"]))]
    if waiting.empty:
        return ""
    states = {rid: store.state(rid) if store.run_dir(rid).is_dir() else "not created yet" for rid in waiting["run_id"]}
    counts = ", ".join(f"{n} {state}" for state, n in sorted(Counter(states.values()).items()))
    ids = " ".join(sorted(states)[:12]) + (" ..." if len(states) > 12 else "")
    return (f"Not finished: {len(waiting)} of {len(frame)} runs ({counts}), left out of the means above "
            f"(`harness status {store.sweep}` names them): {ids}")


def cmd_evaluate(args) -> int:
    from protoseg.evaluate import evaluate_run

    overrides = {path: value for path, value in (("data.root", args.root), ("eval.mode", args.mode),
                                                 ("eval.resize", args.resize), ("eval.scales", args.scales),
                                                 ("eval.flip", args.flip))
                 if value is not None}
    run_dirs = _finished_runs(args.run_dir, args.results, Selection(args.only))
    failed = 0
    for run_dir in run_dirs:  # one run that cannot be scored does not stop the others
        try:
            path, metrics = evaluate_run(run_dir, args.split, overrides)
        except (ValueError, FileNotFoundError) as err:  # a bad setting, an unfinished run, data that does not read
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        print("\n".join(_evaluation_lines(run_dir, path, metrics)))
    if len(run_dirs) > 1:
        print(f"\n{len(run_dirs) - failed} of {len(run_dirs)} finished run(s) scored")
    return 2 if failed else 0


def _finished_runs(target: str, results: Path, select: Selection) -> list[Path]:
    """A run (its folder, SWEEP/ID, or its id or a prefix of one under `results`), or every finished run
    (it has metrics.json) of a sweep given by name or folder, that the selection keeps."""
    path = Path(target)
    if (path / "spec.yaml").is_file() or (path / "metrics.json").is_file():
        return [path]  # evaluate_run says what is wrong with it
    folder = path if path.is_dir() else results / target
    if SWEEP_NAME.fullmatch(folder.name) and folder.is_dir():
        store = Store(folder.parent, folder.name)
        done = [{"run_id": p.parent.name} for p in folder.glob("*/metrics.json") if not p.parent.name.startswith(".")]
        runs = [store.run_dir(row["run_id"]) for row in _stored_runs(store, done, select)]
        if not runs:
            raise SelectionError(f"sweep {folder} has no finished run{' that matches ' + select.text if select else ''}")
        return sorted(runs)
    return [one_run(results, target)]


def _run_of(results: Path, reference: str) -> tuple[Store, str, dict]:
    """(store, run id, its status row) of the run a reference names."""
    folder = one_run(results, reference).resolve()
    store = Store(folder.parent.parent, folder.parent.name, backends.alive)
    row = next(r for r in store.rows() if r["run_id"] == folder.name)
    return store, folder.name, row


def cmd_show(args) -> int:
    from .store import read_json

    store, rid, row = _run_of(args.results, args.run)
    folder = store.run_dir(rid)
    metrics = read_json(folder / "metrics.json") or {}
    spec = spec_fields(load_spec(folder) or {})
    defaults = config.flatten(config.baseline())
    lines = [f"run {rid} of sweep {store.sweep}: {folder}",
             f"settings:   {settings_text(row.get('settings') or {}) or '(none recorded)'}",
             f"state:      {row['state']}" + (f", mIoU {row['mIoU']:.2f}" if row.get("mIoU") is not None else "")
             + (f", {row['attempts']} attempt(s)" if row.get("attempts") else "")
             + (f", {row['backend']} job {row['job_id']}" if row.get("job_id") else "")
             + (f" on {row['host']}" if row.get("host") else "")]
    progress = row.get("progress") or {}
    if progress:
        lines.append(f"progress:   {progress['iteration']}/{progress['iterations']} {progress.get('phase') or ''}".rstrip())
    changed = {path: value for path, value in spec.items() if defaults.get(path, object()) != value}
    lines.append("spec (fields that differ from the defaults; spec.yaml has them all):")
    lines += [f"  {path}: {value!r}" for path, value in changed.items()] or ["  (none)"]
    provenance = metrics.get("provenance")
    if provenance:
        lines.append("provenance of the attempt that finished:")
        lines += [f"  {key}: {value}" for key, value in _flat_items(provenance)]
    elif metrics:
        lines.append(f"provenance: not recorded (finished before runs kept it); torch {metrics.get('torch')}, "
                     f"host {metrics.get('host')}, {metrics.get('threads')} thread(s)")
    if row.get("error"):
        lines.append(f"error:      {row['error']}")
        if (folder / "error.txt").is_file():
            lines.append(f"  traceback: {folder / 'error.txt'}")
    log = folder / "train.log"
    if log.is_file():
        lines.append(f"train.log (last {args.lines} lines):")
        lines += [f"  {line}" for line in tail_lines(log, args.lines)]
    print("\n".join(lines))
    return 0


def tail_lines(path: Path, count: int, window: int = 65536) -> list[str]:
    """The last `count` lines of a text file, reading at most its last `window` bytes."""
    with open(path, "rb") as file:
        file.seek(max(0, file.seek(0, os.SEEK_END) - window))
        return file.read().decode("utf-8", "replace").splitlines()[-count:] if count > 0 else []


def _flat_items(mapping: dict, prefix: str = ""):
    for key, value in mapping.items():
        if isinstance(value, dict):
            yield from _flat_items(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def cmd_diff(args) -> int:
    (store_a, a, _), (store_b, b, _) = (_run_of(args.results, ref) for ref in args.runs)
    specs = [spec_fields(load_spec(s.run_dir(r)) or {}) for s, r in ((store_a, a), (store_b, b))]
    paths = [p for p in dict.fromkeys([*specs[0], *specs[1]]) if specs[0].get(p) != specs[1].get(p)]
    names = [f"{store_a.sweep}/{a}", f"{store_b.sweep}/{b}"]
    if not paths:
        print(f"{names[0]} and {names[1]}: the same spec")
        return 0
    from tabulate import tabulate

    print(tabulate([[p, repr(specs[0].get(p)), repr(specs[1].get(p))] for p in paths],
                   headers=["spec field", *names], tablefmt="simple"))
    return 0


def _evaluation_lines(run_dir: Path, path: Path, metrics: dict) -> list[str]:
    protocol = metrics["eval"]
    lines = [f"{run_dir}: iteration {metrics['iteration']} on split {metrics['split']}"
             f"{' of ' + str(metrics['data_root']) if metrics['data_root'] else ''}, {protocol['mode']}, "
             f"scales {protocol['scales']}{', flip' if protocol['flip'] else ''}"]
    width = max(map(len, metrics["per_class_iou"]), default=0)
    lines += [f"  {name:<{width}}  IoU {_pct(iou)}  Acc {_pct(metrics['per_class_acc'][name])}"
              for name, iou in metrics["per_class_iou"].items()]
    if "prototypes_used" in metrics:
        lines.append(f"prototype diversity {metrics['prototype_diversity']}, prototypes used "
                     f"{metrics['prototypes_used']} of {metrics['prototypes_per_class']} per class")
    lines += [f"aAcc {_pct(metrics['aAcc'])}  mAcc {_pct(metrics['mAcc'])}", f"wrote {path}",
              f"mIoU {_pct(metrics['mIoU'])}"]
    return lines


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _refuse_linked_root(args) -> None:
    if args.results.is_symlink() and not args.linked_results:
        raise StoreError(f"--results {args.results} is a symbolic link (to {os.readlink(args.results)}); pass "
                         f"--linked-results to write through it (links inside it stay refused), or name its target")


ONLY_HELP = ("select cells: KEY=VALUE terms, AND within one --only (apart by commas), OR across repeated "
             "--only and between values (seed=0|1); KEY a spec path, its last part (head, seed) or preset; "
             "id=PREFIX for run ids (see the README's 'Selecting cells')")
EXAMPLES = {
    "run": """examples:
  harness run experiments/quickstart.yaml                     # every cell not done; again to resume
  harness run experiments/table2.yaml --dry-run               # the plan: run ids, settings, what would run
  harness run experiments/table2.yaml --smoke                 # every cell end to end on CPU in minutes
  harness run experiments/camvid.yaml --only 'head=parametric,seed=0|1'
  harness run experiments/table2.yaml --backend slurm --profile mycluster --set executor.jobs=8""",
    "status": """examples:
  harness status                                   # every sweep under results/
  harness status experiments/camvid.yaml           # that sweep, and its cells not created yet
  harness status camvid --only head=parametric --watch""",
    "cancel": """examples:
  harness cancel experiments/table2.yaml           # queued and running runs stop at a checkpoint
  harness cancel table2 --only preset=hrnet48_cityscapes""",
    "report": """examples:
  harness report camvid                            # Markdown table, with how many runs each row has
  harness report table2 --layout paper --format latex --out table2.tex
  harness report quickstart --plots figures/       # and the figures""",
    "estimate": """examples:
  harness estimate experiments/camvid.yaml                     # cells not done yet, timed here
  harness estimate experiments/table2.yaml --batch 2 --crop-scale 0.5 --profile mycluster""",
    "evaluate": """examples:
  harness evaluate e630d51a9ce1 --split test       # a run, by id or a prefix of one
  harness evaluate camvid --scales 0.5 1.0 1.5 --flip  # every finished run of a sweep""",
    "show": """examples:
  harness show e630d5                              # settings, state, provenance, log tail, error""",
    "diff": """examples:
  harness diff e630d5 876c21                       # the settings that differ between two runs""",
}


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
    linked_results = ("the --results folder itself may be a symbolic link (to cluster scratch, say); links "
                      "inside it stay refused")
    run.add_argument("--linked-results", action="store_true", help=linked_results)

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
    can.add_argument("--linked-results", action="store_true", help=linked_results)
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
    rep.set_defaults(func=cmd_report)

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


EXIT_CODES = """exit codes: 0 every selected cell done (or left running elsewhere, or taken over there); 1 some
cells failed or crashed (counted and listed); 2 invalid input (experiment file, spec, sweep name) or a
results folder the harness cannot use (read-only, full, no flock, a symbolic link inside); 3 the
backend's cluster cannot be reached; 4 an internal error (a bug: please report the traceback);
128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP: running runs checkpointed)"""


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
