"""`harness report`: a table per sweep (Markdown, LaTeX or CSV), the runs it leaves out named, and figures."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from . import backends, matrix
from .selection import Selection, stored_runs
from .store import Store, sweeps


def cmd_report(args) -> int:
    import pandas as pd

    from . import report

    if args.layout == "paper" and args.format == "csv":
        print("error: --layout paper writes md or latex; --format csv writes the runs' aggregate (--layout runs)",
              file=sys.stderr)
        return 2
    select = Selection(args.only)
    name, planned = matrix.sweep_name_of(args.target), None
    if Path(args.target or "").suffix in (".yaml", ".yml"):  # its cells not created yet count as missing
        planned = matrix.load(args.target, spec_version=Store(args.results, name).spec_version(), select=select)
    stores = sweeps(args.results, name, backends.alive)
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
        keep = {row["run_id"] for row in stored_runs(store, rows, select)}
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
