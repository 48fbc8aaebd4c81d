"""`harness report SWEEP --layout paper`: the paper's Tables 1-2 layout, each cell of ours beside the paper's
number (results/paper/protoseg_cvpr22.yaml), Ours rows under their baseline, gains, #Param as the paper
counts it; a smoke sweep never shows a reference number; the LaTeX compiles with booktabs alone."""
import json
import shutil
import subprocess

import pytest

from conftest import ROOT
from harness import cli, matrix, paper_layout, report
from harness.store import Store
from protoseg.io import atomic_write_json, load_yaml
from protoseg import config
from protoseg.registry import DATASETS

TABLE2 = ROOT / "experiments" / "table2.yaml"
PAPER = load_yaml((ROOT / "results" / "paper" / "protoseg_cvpr22.yaml").read_text())["entries"]
CODE = load_yaml((ROOT / "results" / "paper" / "protoseg_official_code.yaml").read_text())["entries"]
# The paper's two tables: every entry but the UperNet row, which table2 does not train.
TABLE_ROWS = [e for e in PAPER if e["decoder"] != "upernet"]

# Made-up test inputs (no claim about any model): our mIoU and counts per cell.
BASELINE_MIOU = {("resnet101c", "ade20k"): 40.3, ("resnet101c", "cityscapes"): 77.6,
                 ("hrnet_w48", "ade20k"): 42.4, ("hrnet_w48", "cityscapes"): 79.2,
                 ("swin_base", "ade20k"): 47.2, ("swin_base", "cityscapes"): 80.2,
                 ("mit_b4", "ade20k"): 49.6, ("mit_b4", "cityscapes"): 81.6,
                 ("resnet101c", "coco_stuff10k"): 35.2, ("hrnet_w48", "coco_stuff10k"): 37.1,
                 ("swin_base", "coco_stuff10k"): 41.3, ("mit_b4", "coco_stuff10k"): 44.7}
OURS_GAIN = {"resnet101c": 1.4, "hrnet_w48": 0.8, "swin_base": -0.3, "mit_b4": 0.6}
FAMILY_COUNT = {"resnet101c": 68_570_000, "hrnet_w48": 70_120_000, "swin_base": 90_730_000, "mit_b4": 64_130_000}
OURS_EXTRA = {"resnet101c": 450_000, "hrnet_w48": 960_000, "swin_base": 1_070_000, "mit_b4": 1_070_000}
AUX_HEAD = 2_370_000  # left out of params_learnable (the model as it infers)


def made_up_miou(backbone: str, dataset: str, head: str) -> float:
    return BASELINE_MIOU[backbone, dataset] + (OURS_GAIN[backbone] if head == "nonparametric" else 0.0)


def made_up_count(backbone: str, head: str, dataset: str) -> int:
    """Learnable parameters as trained; they grow with K, so each dataset's count differs."""
    extra = OURS_EXTRA[backbone] if head == "nonparametric" else 0
    return FAMILY_COUNT[backbone] + extra + 1000 * (DATASETS[dataset].num_classes - 150)


def write_run(store: Store, run_id: str, spec: dict, miou: float, **metrics) -> None:
    """A finished run as engine.run leaves it: spec.yaml, then metrics.json with the spec inside."""
    m = spec["model"]
    count = made_up_count(m["backbone"], m["head"], spec["data"]["dataset"])
    store.prepare(run_id, spec, {})
    atomic_write_json(store.run_dir(run_id) / "metrics.json", {
        "mIoU": miou, "num_classes": DATASETS[spec["data"]["dataset"]].num_classes, "params_learnable_with_aux": count,
        "params_learnable": count - (AUX_HEAD if m["aux_head"] else 0), "params_total": count, "macs": 1e9,
        "spec": spec, **metrics})


def write_table2(results, sweep: str = "table2", datasets=("ade20k", "cityscapes")) -> Store:
    """table2's real cells (experiments/table2.yaml) of `datasets`, finished with made-up numbers."""
    store = Store(results, sweep)
    runs = [r for r in matrix.load(TABLE2).runs if r.value("data.dataset") in datasets]
    for run in runs:
        spec = run.spec
        write_run(store, run.run_id, spec, made_up_miou(spec["model"]["backbone"], spec["data"]["dataset"],
                                                        spec["model"]["head"]))
    store.record_sweep(str(TABLE2), None, {}, [r.run_id for r in runs])
    return store


def markdown_rows(text: str) -> list[dict]:
    """The pipe table of a Markdown report as {header: cell} per row."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [dict(zip(split[0], cells)) for cells in split[2:]]


def paper_md(results, sweep="table2") -> str:
    return paper_layout.render(report.load_runs([results / sweep]), "md")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    write_table2(results)
    return results


def test_every_cell_of_the_papers_two_tables_sits_beside_ours(results):
    rows = markdown_rows(paper_md(results))
    assert len(TABLE_ROWS) == 16
    for entry in TABLE_ROWS:
        row = next(r for r in rows if (r["Method"], r["Backbone"]) == (entry["method"], entry["backbone_label"]))
        name = paper_layout.dataset_name(entry["dataset"])
        assert row[f"{name} paper"].split(" (")[0] == f"{entry['mIoU']:.1f}", entry["source"]
        assert row["#Param (M) paper"] == f"{entry['params_M']:.1f}", entry["source"]
        ours = made_up_miou(entry["backbone"], entry["dataset"], entry["head"])
        assert row[name].split(" (")[0] == f"{ours:.1f}"


def test_ours_rows_sit_under_their_baseline_with_both_gains(results):
    rows = markdown_rows(paper_md(results))
    baselines = list(dict.fromkeys((e["method"], e["backbone_label"]) for e in TABLE_ROWS if e["head"] == "parametric"))
    expected = [pair for method, label in baselines for pair in ((method, label), ("Ours", label))]
    assert [(r["Method"], r["Backbone"]) for r in rows] == expected  # the paper's order, Ours under its baseline
    for entry in (e for e in TABLE_ROWS if e["head"] == "nonparametric"):
        base = next(e for e in TABLE_ROWS if (e["dataset"], e["backbone"], e["head"]) ==
                    (entry["dataset"], entry["backbone"], "parametric"))
        name = paper_layout.dataset_name(entry["dataset"])
        row = next(r for r in rows if (r["Method"], r["Backbone"]) == ("Ours", entry["backbone_label"]))
        assert row[f"{name} paper"] == f"{entry['mIoU']:.1f} ({entry['mIoU'] - base['mIoU']:+.1f})"
        ours = made_up_miou(entry["backbone"], entry["dataset"], "nonparametric")
        assert row[name] == f"{ours:.1f} ({OURS_GAIN[entry['backbone']]:+.1f})"
        baseline_row = rows[rows.index(row) - 1]
        assert baseline_row[name] == f"{BASELINE_MIOU[entry['backbone'], entry['dataset']]:.1f}"  # no gain


def test_param_is_the_learnable_count_with_the_auxiliary_head_at_ade20k(results):
    text = paper_md(results)
    for entry in TABLE_ROWS:
        row = next(r for r in markdown_rows(text) if (r["Method"], r["Backbone"]) ==
                   (entry["method"], entry["backbone_label"]))
        assert row["#Param (M)"] == f"{made_up_count(entry['backbone'], entry['head'], 'ade20k') / 1e6:.2f}"
    assert "counted at K = 150 (ADE20K)" in text and "auxiliary head included" in text
    gains = sorted(OURS_EXTRA.values())
    assert f"(+{gains[0] / 1e6:.2f} to +{gains[-1] / 1e6:.2f} M over our baseline)" in text


def test_a_run_without_the_count_with_aux_falls_back_only_when_it_trained_no_auxiliary_head(tmp_path):
    write_table2(tmp_path, datasets=("cityscapes",))
    for path in (tmp_path / "table2").glob("*/metrics.json"):
        metrics = json.loads(path.read_text())
        del metrics["params_learnable_with_aux"]  # a run of a version that did not count it
        path.write_text(json.dumps(metrics))
    text = paper_md(tmp_path)
    rows = {(r["Method"], r["Backbone"]): r for r in markdown_rows(text)}
    assert rows["FCN", "ResNet-101"]["#Param (M)"] == ""  # its auxiliary head was trained, not counted
    hrnet = made_up_count("hrnet_w48", "parametric", "cityscapes")  # no auxiliary head: learnable is the count
    assert rows["HRNet", "HRNetV2-W48"]["#Param (M)"] == f"{hrnet / 1e6:.2f}"
    assert "counted at K = 19 (Cityscapes)" in text


def test_more_seeds_and_prototype_counts_show_as_mean_std_and_named_ours_rows(tmp_path):
    store = write_table2(tmp_path, datasets=("ade20k",))
    run = next(r for r in matrix.load(TABLE2).runs if r.settings == {"preset": "fcn_r101-ade20k",
                                                                     "model.head": "nonparametric"})
    for run_id, changes, miou in (("seed1", {"train": {"seed": 1}}, made_up_miou("resnet101c", "ade20k", "nonparametric") + 1.0),
                                  ("m5", {"model.prototype": {"num_prototypes": 5}}, 40.0)):
        spec = run.spec
        for section, values in changes.items():
            config.get(spec, section).update(values)
        write_run(store, run_id, spec, miou)
    rows = markdown_rows(paper_md(tmp_path))
    fcn = [r for r in rows if r["Backbone"] == "ResNet-101"]
    assert [r["Method"] for r in fcn] == ["FCN", "Ours (M=5)", "Ours (M=10)"]
    ours = made_up_miou("resnet101c", "ade20k", "nonparametric") + 0.5  # mean of the two seeds
    assert fcn[2]["ADE20K"] == f"{ours:.1f} ± 0.7 ({ours - BASELINE_MIOU['resnet101c', 'ade20k']:+.1f})"
    assert fcn[1]["ADE20K paper"] == report.UNKNOWN  # the paper has no M=5 row


def test_datasets_the_paper_lacks_say_so_and_the_official_code_is_a_footnote(tmp_path):
    write_table2(tmp_path, datasets=("ade20k", "cityscapes", "coco_stuff10k"))
    text = paper_md(tmp_path)
    rows = markdown_rows(text)
    assert {r["COCO-Stuff-10k paper"] for r in rows} == {report.UNKNOWN}
    assert all(r["COCO-Stuff-10k"] for r in rows)  # ours is there
    assert "(COCO-Stuff-10k: test)" in text  # its val split is named test
    hrnet = {e["head"]: e["mIoU"] for e in CODE}
    assert "code = the official ProtoSeg code release's README" in text
    assert f"HRNet / HRNetV2-W48 on Cityscapes {hrnet['parametric']:.1f}" in text
    assert f"Ours / HRNetV2-W48 on Cityscapes {hrnet['nonparametric']:.1f}" in text


def test_the_hrnet_note_names_the_head_built_and_only_where_hrnet_is_shown(tmp_path):
    store = write_table2(tmp_path, datasets=("cityscapes",))
    text = paper_md(tmp_path)
    paper = next(e for e in PAPER if e["backbone"] == "hrnet_w48" and e["head"] == "parametric")
    assert "HRNet: our runs use the official code's 3x3 fusion conv (model.decoder_kernel unset)" in text
    assert f"the paper's {paper['params_M']:.1f} M corresponds to the 1x1 head (model.decoder_kernel: 1)" in text
    for run_id in store.run_ids():
        if json.loads((store.run_dir(run_id) / "metrics.json").read_text())["spec"]["model"]["decoder"] == "hrnet":
            shutil.rmtree(store.run_dir(run_id))
    assert "HRNet:" not in paper_md(tmp_path)


def test_a_smoke_sweep_says_smoke_and_shows_no_reference_in_either_layout(tmp_path):
    write_table2(tmp_path, sweep="table2-smoke")
    frame = report.load_runs([tmp_path / "table2-smoke"])
    md, latex = paper_layout.render(frame, "md"), paper_layout.render(frame, "latex")
    assert md.startswith("SMOKE") and "\\caption{SMOKE" in latex
    rows = markdown_rows(md)
    assert list(rows[0]) == ["Method", "Backbone", "#Param (M)", "ADE20K", "Cityscapes"]
    agg = report.aggregate(frame)
    runs_table, caption = report.paper_table(agg), report.caption(frame, agg)
    assert caption.startswith("SMOKE") and report.render(agg, "latex", caption).count("SMOKE") == 1
    assert not [c for c in agg.columns if c.startswith(report.REFERENCE)]
    for text in (md, latex, caption, " ".join(runs_table.columns)):
        for name in ("paper", "code", "mmseg"):
            assert f"{name} =" not in text
        assert report.UNKNOWN not in text
    assert "Method & Backbone & ours & ours & ours \\\\" in latex
    assert not [c for c in runs_table.columns if c.endswith((" paper", " code", " mmseg"))]


def test_cli_writes_the_latex_table_and_refuses_csv_in_the_paper_layout(results, tmp_path, capsys):
    out = tmp_path / "table.tex"
    args = ["report", "table2", "--results", str(results), "--layout", "paper"]
    assert cli.main([*args, "--format", "latex", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("\\begin{table}") and "\\label{tab:table2}" in text
    assert "\\multicolumn{2}{c}{ADE20K} & \\multicolumn{2}{c}{Cityscapes}" in text
    assert "\\cmidrule(lr){3-4} \\cmidrule(lr){5-6} \\cmidrule(lr){7-8}" in text
    assert text.count("\\midrule") == 1 + 3  # under the header, then between the four families
    assert cli.main([*args, "--format", "csv"]) == 2 and "--layout paper writes md or latex" in capsys.readouterr().err
    assert cli.main(["report", "table2", "--results", str(results)]) == 0  # the runs layout stays the default
    assert "resnet101c" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (Debian: texlive-latex-base "
                                                               "texlive-latex-recommended; .ci/run installs them)")
@pytest.mark.parametrize("sweep", ["table2", "table2-smoke"])
def test_the_latex_table_compiles_with_booktabs_alone(tmp_path, sweep):
    write_table2(tmp_path / "results", sweep=sweep)
    (tmp_path / "table.tex").write_text(paper_layout.render(report.load_runs([tmp_path / "results" / sweep]),
                                                            "latex"))
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}"
                                      "\\input{table}\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:]
    pdf = tmp_path / "doc.pdf"
    assert pdf.exists() and pdf.stat().st_size > 0
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                              timeout=60).stdout
        ours = made_up_miou("hrnet_w48", "cityscapes", "parametric")
        assert "Cityscapes" in text and f"{ours:.1f}" in text and "SegFormer" in text


def test_parametric_runs_of_two_head_kernels_are_two_rows_not_one_average(tmp_path):
    from harness import report

    runs = [{"model.backbone": "hrnet_w48", "model.decoder": "hrnet", "model.head": "parametric",
             "model.decoder_kernel": kernel, "model.prototype.num_prototypes": 10, "data.dataset": "cityscapes",
             "train.seed": 0, "mIoU": miou, "params_learnable": 1.0, "params_learnable_with_aux": 1.0,
             "macs": 1.0, "num_classes": 19, "model.aux_head": False, "sweep": "t"}
            for kernel, miou in ((None, 70.0), (1, 60.0))]
    runs.append({**runs[0], "model.head": "nonparametric", "mIoU": 71.0})
    agg = report.aggregate(report.pd.DataFrame(runs), references={})
    assert sorted(agg.loc[agg["head"] == "parametric", "mIoU_mean"]) == [60.0, 70.0]
    assert len(set(agg["method"])) == 3 and agg["gain"].isna().all()  # which baseline is unsaid: no gain
