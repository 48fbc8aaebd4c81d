"""`harness report SWEEP --layout paper`: the layout of the paper's Tables 1 (ADE20K) and 2 (Cityscapes).

One block per backbone / decoder family, in the paper's order: its baseline row (the paper's row label),
then its ProtoSeg rows ("Ours") right under it. Columns: #Param (M), then one mIoU group per dataset; each
number of ours beside the paper's (results/paper/protoseg_cvpr22.yaml), an Ours row's gain over its
baseline in parentheses. Markdown through tabulate, LaTeX written here (booktabs; a two-level header and a
rule between families). A smoke sweep shows no reference number at all.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from . import report

PAPER, CODE = "paper", "code"  # the reference columns (results/paper/*.yaml `column:`) this layout shows
PARAM_DATASET = "ade20k"  # the paper counts #Param at K = 150, ADE20K's, for both of its tables
DATASET_NAMES = {"ade20k": "ADE20K", "cityscapes": "Cityscapes", "coco_stuff10k": "COCO-Stuff-10k",
                 "coco_stuff164k": "COCO-Stuff-164k", "camvid": "CamVid"}
KERNELS = {3: "the official code's 3x3 fusion conv (model.decoder_kernel unset)",
           1: "the 1x1 fusion conv (model.decoder_kernel: 1)"}


@dataclass
class Row:
    backbone: str
    decoder: str
    label: str  # the paper's: FCN, HRNet, Swin, SegFormer, ..., Ours
    backbone_label: str  # the paper's: ResNet-101, HRNetV2-W48, ...
    head: str
    prototypes: int
    cells: dict[str, pd.Series]  # dataset -> the row's line of report.aggregate


def render(frame: pd.DataFrame, fmt: str) -> str:
    """The runs of `frame` (report.load_runs) in the paper's layout, as Markdown ('md') or LaTeX ('latex')."""
    references = report.load_references()
    with_references = not report.is_smoke(frame)
    agg = report.aggregate(frame, references={})  # this layout looks its references up itself
    families = _families(agg, references.get(PAPER, []))
    datasets = _datasets(agg, references.get(PAPER, []))
    paper = references.get(PAPER, []) if with_references else None
    groups = [(title, ["ours", "paper"] if with_references else ["ours"])
              for title in ("#Param (M)", *map(dataset_name, datasets))]
    cells = [[_cells(row, datasets, paper) for row in family] for family in families]
    title = _title(frame, with_references)
    notes = " ".join(_notes(frame, families, datasets, references if with_references else None))
    if fmt == "latex":
        return _latex(title, notes, groups, cells, label="+".join(dict.fromkeys(frame["sweep"])))
    return _markdown(title, notes, groups, cells)


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def _datasets(agg: pd.DataFrame, paper: list[dict]) -> list[str]:
    """The datasets of the runs: the paper's tables first, in its order."""
    ours = list(dict.fromkeys(agg["data.dataset"]))
    known = [d for d in dict.fromkeys(e["dataset"] for e in paper) if d in ours]
    return known + [d for d in ours if d not in known]


def _families(agg: pd.DataFrame, paper: list[dict]) -> list[list[Row]]:
    """The rows of each backbone / decoder family; families in the paper's order, the others after."""
    keys = list(dict.fromkeys(zip(agg["model.backbone"], agg["model.decoder"])))
    known = list(dict.fromkeys((e["backbone"], e.get("decoder")) for e in paper))
    keys.sort(key=lambda key: known.index(key) if key in known else len(known))
    return [_family(agg, paper, *key) for key in keys]


def _family(agg: pd.DataFrame, paper: list[dict], backbone: str, decoder: str) -> list[Row]:
    """The family's baseline row(s), then its ProtoSeg rows by prototypes per class."""
    group = agg[(agg["model.backbone"] == backbone) & (agg["model.decoder"] == decoder)]
    methods = dict(tuple(group.groupby("method", sort=False)))
    baselines = [m for m, lines in methods.items() if lines["head"].iloc[0] == "parametric"]
    ours = [m for m in methods if m not in baselines]
    entry = next((e for e in paper if (e["backbone"], e.get("decoder"), e["head"]) ==
                  (backbone, decoder, "parametric")), {})
    rows = []
    for method in baselines + ours:
        if method in baselines:  # several: their method labels tell them apart
            label = entry.get("method", decoder) + ("" if len(baselines) == 1 else
                                                    " " + method.removeprefix("parametric").strip())
        else:
            label = "Ours" if len(ours) == 1 else f"Ours ({method.removeprefix('ProtoSeg ')})"
        lines = methods[method]
        rows.append(Row(backbone, decoder, label, entry.get("backbone_label", backbone), lines["head"].iloc[0],
                        lines["prototypes"].iloc[0], {line["data.dataset"]: line for _, line in lines.iterrows()}))
    return rows


def _reference(entries: list[dict], row: Row, dataset: str, head: str | None = None) -> dict | None:
    return report.reference_entry(entries, {"data.dataset": dataset, "model.backbone": row.backbone,
                                            "model.decoder": row.decoder, "head": head or row.head,
                                            "prototypes": row.prototypes})


def _count(line: pd.Series) -> float | None:
    """Learnable parameters of the model as trained, its auxiliary head included (the paper counts FCN's);
    a run that predates that count has it only where it trained no auxiliary head."""
    if pd.notna(line["params_learnable_with_aux"]):
        return line["params_learnable_with_aux"]
    if pd.notna(line["aux_head"]) and not line["aux_head"] and pd.notna(line["params_learnable"]):
        return line["params_learnable"]
    return None


def _counted_at(row: Row, datasets: list[str]) -> str:
    """The dataset whose run gives the row's #Param: ADE20K's where it has one (K = 150, as the paper)."""
    return min(row.cells, key=lambda d: (d != PARAM_DATASET, datasets.index(d)))


def _paper_count(paper: list[dict], row: Row) -> float | None:
    """The paper's #Param of the row (one per row, the same in both of its tables)."""
    for dataset in dict.fromkeys([PARAM_DATASET, *(e["dataset"] for e in paper)]):
        entry = _reference(paper, row, dataset)
        if entry is not None and entry.get("params_M") is not None:
            return entry["params_M"]
    return None


def _number(value, digits: int) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _gain(value) -> str:
    return "" if value is None or pd.isna(value) else f" ({value:+.1f})"


def _our_miou(line: pd.Series | None) -> str:
    if line is None:
        return ""
    spread = f" ± {line['mIoU_std']:.1f}" if line["seeds"] > 1 else ""
    return f"{line['mIoU_mean']:.1f}{spread}{_gain(line['gain'])}"


def _paper_miou(paper: list[dict], row: Row, dataset: str) -> str:
    """The paper's number; an Ours row's gain over the paper's own baseline."""
    entry = _reference(paper, row, dataset)
    if entry is None or entry.get("mIoU") is None:
        return report.UNKNOWN
    base = None if row.head == "parametric" else _reference(paper, row, dataset, head="parametric")
    gain = None if base is None or base.get("mIoU") is None else entry["mIoU"] - base["mIoU"]
    return f"{entry['mIoU']:.1f}{_gain(gain)}"


def _cells(row: Row, datasets: list[str], paper: list[dict] | None) -> list[str]:
    """The row's text cells; without the paper's columns when `paper` is None (a smoke sweep)."""
    cells = [row.label, row.backbone_label, _number(_millions(row, datasets), 2)]
    if paper is not None:
        cells.append(_number(_paper_count(paper, row), 1) or report.UNKNOWN)
    for dataset in datasets:
        cells.append(_our_miou(row.cells.get(dataset)))
        if paper is not None:
            cells.append(_paper_miou(paper, row, dataset))
    return cells


def _millions(row: Row, datasets: list[str]) -> float | None:
    count = _count(row.cells[_counted_at(row, datasets)])
    return None if count is None else count / 1e6


def _title(frame: pd.DataFrame, with_references: bool) -> str:
    sweeps = ", ".join(dict.fromkeys(frame["sweep"]))
    if not with_references:
        return f"SMOKE: sweep {sweeps} in the paper's layout; its numbers measure nothing"
    return f"mIoU (%) and #Param (M) of sweep {sweeps} beside the paper's Tables 1-2 (Zhou et al., CVPR 2022)"


def _notes(frame: pd.DataFrame, families: list[list[Row]], datasets: list[str],
           references: dict[str, list[dict]] | None) -> list[str]:
    """The caption's notes, each said only where the table shows what it explains; no reference is named
    when `references` is None (a smoke sweep)."""
    rows = [row for family in families for row in family]
    notes = [] if references is not None else [report.smoke_text(frame)]
    papers_gain = ", the paper's from its own two numbers" if references is not None else ""
    notes.append(f"mIoU (%) {_scales(frame)} on the val split{_odd_splits(frame)}, mean ± std over seeds where "
                 f"there are several; in parentheses the gain of an Ours row: Ours minus the baseline of the same "
                 f"backbone{papers_gain}.")
    notes.append(_count_note(rows, datasets, references is not None))
    notes += _hrnet_note(frame, families, references)
    if references is not None:
        notes.append(f"paper = {report.REFERENCE_SOURCES[PAPER]}; {report.UNKNOWN} where it has no number.")
        notes += _code_note(references.get(CODE, []), rows, datasets)
    in_order = frame.sort_values("data.dataset", key=lambda column: column.map(datasets.index), kind="stable")
    notes.append(f"Protocol: {report.protocols(in_order)}.")
    return notes


def _scales(frame: pd.DataFrame) -> str:
    single = all(tuple(s) == (1.0,) for s in frame["eval.scales"]) and not frame["eval.flip"].any()
    return "single-scale" if single else "multi-scale and/or flip (see the protocol)"


def _odd_splits(frame: pd.DataFrame) -> str:
    """' (COCO-Stuff-10k: test)' for the datasets scored on a split that is not named val."""
    odd = {dataset_name(d): s for d, s in zip(frame["data.dataset"], frame["data.val_split"])
           if s not in ("val", "validation")}
    return f" ({', '.join(f'{d}: {s}' for d, s in odd.items())})" if odd else ""


def _count_note(rows: list[Row], datasets: list[str], with_references: bool) -> str:
    at = {}  # dataset -> K
    for row in rows:
        dataset = _counted_at(row, datasets)
        at[dataset] = int(row.cells[dataset]["num_classes"])
    where = "; ".join(f"K = {k} ({dataset_name(d)})" for d, k in at.items())
    text = (f"#Param = learnable parameters of the model as trained, the auxiliary head included (the paper "
            f"counts FCN's), counted at {where}")
    if len(at) > 1:
        text += f": a row's {dataset_name(PARAM_DATASET)} run where it has one, else its first dataset's"
    gains = _projection_counts(rows, datasets)
    if gains:
        span = f"+{min(gains):.2f}" + (f" to +{max(gains):.2f}" if max(gains) > min(gains) else "")
        text += (f". Our Ours rows count the real model, the projection head included ({span} M over our "
                 f"baseline)")
        if with_references:
            text += "; the paper's Ours rows are its baseline less the classifier"
    return text + "."


def _projection_counts(rows: list[Row], datasets: list[str]) -> list[float]:
    """Ours minus the family's baseline, in M, for each Ours row counted at its baseline's dataset."""
    out = []
    for base in (r for r in rows if r.head == "parametric"):
        at, base_count = _counted_at(base, datasets), _millions(base, datasets)
        for row in rows:
            if (row.backbone, row.decoder, row.head) == (base.backbone, base.decoder, "nonparametric") \
                    and _counted_at(row, datasets) == at and None not in (base_count, _millions(row, datasets)):
                out.append(_millions(row, datasets) - base_count)
    return out


def _hrnet_note(frame: pd.DataFrame, families: list[list[Row]], references: dict | None) -> list[str]:
    """Which HRNet head our runs built (an absent model.decoder_kernel, in old runs, is the official 3x3) and
    which one the paper's #Param counts; only where an hrnet row is shown."""
    hrnet = [family[0] for family in families if family[0].decoder == "hrnet"]
    if not hrnet:
        return []
    runs = frame[frame["model.decoder"] == "hrnet"]
    kernels = sorted({3 if pd.isna(k) else int(k) for k in runs.get("model.decoder_kernel", [None] * len(runs))},
                     reverse=True)
    text = f"HRNet: our runs use {' and '.join(KERNELS[k] for k in kernels)}"
    paper = _paper_count(references.get(PAPER, []), hrnet[0]) if references is not None else None
    if paper is not None:
        text += f"; the paper's {paper:.1f} M corresponds to the 1x1 head (model.decoder_kernel: 1)"
    return [text + "."]


def _code_note(code: list[dict], rows: list[Row], datasets: list[str]) -> list[str]:
    """The official code release's numbers of the rows shown, as a footnote (one or two rows have one)."""
    found = [f"{row.label} / {row.backbone_label} on {dataset_name(d)} {entry['mIoU']:.1f}"
             for row in rows for d in datasets if (entry := _reference(code, row, d)) is not None]
    return [f"code = {report.REFERENCE_SOURCES[CODE]}: {', '.join(found)}."] if found else []


def _headers(groups: list[tuple[str, list[str]]]) -> list[str]:
    return ["Method", "Backbone"] + [title if sub == "ours" else f"{title} {sub}" for title, subs in groups
                                     for sub in subs]


def _markdown(title: str, notes: str, groups, families: list[list[list[str]]]) -> str:
    from tabulate import tabulate

    headers = _headers(groups)
    table = tabulate([cells for family in families for cells in family], headers=headers, tablefmt="pipe",
                     disable_numparse=True, colalign=["left", "left"] + ["right"] * (len(headers) - 2))
    return f"{title}\n\n{table}\n\n{notes}"


def _latex(title: str, notes: str, groups, families: list[list[list[str]]], label: str) -> str:
    """A table float: booktabs rules, one \\multicolumn per group over its sub-columns, \\midrule between
    families; nothing beyond booktabs is needed."""
    text = report.latex_text
    top, rules, first = ["", ""], [], 3
    for group, subs in groups:
        top.append(f"\\multicolumn{{{len(subs)}}}{{c}}{{{text(group)}}}")
        rules.append(f"\\cmidrule(lr){{{first}-{first + len(subs) - 1}}}")
        first += len(subs)
    second = ["Method", "Backbone"] + [sub for _, subs in groups for sub in subs]
    body = "\n\\midrule\n".join("\n".join(_latex_row(map(text, cells)) for cells in family) for family in families)
    return "\n".join([
        "\\begin{table}[t]", "\\centering", "\\small", "\\setlength{\\tabcolsep}{4pt}", f"\\caption{{{text(title)}}}",
        f"\\label{{tab:{label}}}", f"\\begin{{tabular}}{{ll{'r' * (first - 3)}}}", "\\toprule",
        _latex_row(top), " ".join(rules), _latex_row(second), "\\midrule", body, "\\bottomrule",
        "\\end{tabular}", "\\par\\smallskip", f"{{\\footnotesize\\raggedright {text(notes)}\\par}}",
        "\\end{table}", ""])


def _latex_row(cells) -> str:
    return " & ".join(cells) + " \\\\"
