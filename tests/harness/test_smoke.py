"""`harness run FILE --smoke`: the real matrix, every cell, on generated data in each dataset's layout."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import ROOT, run_harness
from harness import matrix, smoke
from harness.store import Store

TABLE2 = ROOT / "experiments" / "table2.yaml"
PAPER_SIZES = {"ade20k": [512, 512], "coco_stuff10k": [512, 512], "cityscapes": [1024, 2048]}


def test_table2_lists_24_cells_and_its_smoke_plan_shrinks_every_cell_but_the_counted_size(tmp_path):
    real = matrix.load(TABLE2)
    plan = matrix.load(TABLE2, smoke_results=tmp_path)
    assert len(real.runs) == len(plan.runs) == 24 and plan.name == "table2-smoke" and real.name == "table2"
    assert not {r.run_id for r in real.runs} & {r.run_id for r in plan.runs}
    families = {(r.value("model.backbone"), r.value("model.decoder")) for r in plan.runs}
    assert families == {("resnet101c", "fcn"), ("hrnet_w48", "hrnet"), ("swin_base", "segformer"),
                        ("mit_b4", "segformer")}
    assert {r.value("model.norm") for r in real.runs} == {"SyncBN"}
    for run in plan.runs:
        dataset = run.value("data.dataset")
        assert run.value("train.iterations") == 2 and run.value("data.crop_size") == [64, 64]
        assert run.value("model.pretrained") is None
        assert run.value("data.root") == str(tmp_path.resolve() / ".smoke-data" / dataset)
        assert run.value("eval.complexity_size") == PAPER_SIZES[dataset]
    recipe = {r.value("model.backbone"): r for r in real.runs}
    assert recipe["mit_b4"].value("train.head_lr_mult") == 10 and recipe["mit_b4"].value("train.optimizer") == "adamw"
    assert recipe["swin_base"].value("model.drop_path") == 0.3 and not recipe["swin_base"].value("model.aux_head")
    assert recipe["swin_base"].value("model.decoder_channels") == 768  # the light head of the paper's 90.6 M
    assert recipe["resnet101c"].value("model.output_stride") == 8 and recipe["resnet101c"].value("model.aux_head")


def _small_matrix(tmp_path) -> tuple:
    doc = {"sweep": "paperlike", "base": {"model": {"backbone": "resnet18", "decoder": "fcn", "aux_head": True},
                                          "data": {"root": "${PROTOSEG_DATA}/unused"},
                                          "train": {"iterations": 300}},
           "matrix": {"data.dataset": ["ade20k", "cityscapes"], "model.head": ["parametric"]},
           "include": [{"data.dataset": "coco_stuff10k", "model.head": "nonparametric"}],
           "executor": {"backend": "local", "jobs": 2}}
    path = tmp_path / "paperlike.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, tmp_path / "results"


@pytest.mark.slow
def test_smoke_runs_every_cell_on_fixtures_into_its_own_sweep(tmp_path):
    path, results = _small_matrix(tmp_path)
    proc = run_harness("run", path, "--smoke", results=results, env={"PROTOSEG_DATA": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (results / "paperlike").exists()  # never mixed with the real sweep
    store = Store(results, "paperlike-smoke")
    metrics = [json.loads((store.run_dir(rid) / "metrics.json").read_text()) for rid in store.run_ids()]
    assert sorted(m["spec"]["data"]["dataset"] for m in metrics) == ["ade20k", "cityscapes", "coco_stuff10k"]
    assert {m["num_classes"] for m in metrics} == {150, 19, 171}
    assert all(m["iterations"] == 2 and "aux" in m["history"][-1] for m in metrics)
    assert not any((store.run_dir(rid) / "checkpoints").exists() for rid in store.run_ids())
    assert "smoke: removed the finished runs' checkpoints" in proc.stdout
    for dataset in ("ade20k", "cityscapes", "coco_stuff10k"):
        assert (results / ".smoke-data" / dataset / ".complete").exists()
    again = run_harness("run", path, "--smoke", results=results)
    assert again.returncode == 0 and again.stdout.count("skip (done)") == 3, again.stdout


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_table2_smoke_completes_every_cell(tmp_path):
    """The whole paper matrix end to end on this CPU (the real architectures; a few minutes)."""
    results = tmp_path / "results"
    proc = run_harness("run", TABLE2, "--smoke", results=results, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = run_harness("report", "table2-smoke", results=results)
    assert report.returncode == 0, report.stderr
    for backbone in ("resnet101c", "hrnet_w48", "swin_base", "mit_b4"):
        assert backbone in report.stdout
    assert "SMOKE" in report.stdout and "n/a" not in report.stdout  # no reference beside smoke numbers
    assert len(list(Store(results, "table2-smoke").run_ids())) == 24
    sizes = proc.stdout[proc.stdout.index("#Param (M), learnable"):].splitlines()
    assert len(sizes) == 1 + 8  # a line per model: 4 families x 2 heads, each at K = 150
    marked = [line.split()[0] for line in sizes if "more than 1% off" in line]
    assert marked == ["hrnet_w48"]  # the official 3x3 head (README: the paper's is the 1x1 one)


def test_ablations_file_plans_the_official_cell_and_one_cell_per_changed_value():
    runs = matrix.load(ROOT / "experiments" / "ablations.yaml").runs
    official = {"model.prototype.num_prototypes": 10, "model.prototype.gamma": 0.999, "model.prototype.ppc_weight": 0.01,
                                "model.prototype.ppd_weight": 0.001, "model.prototype.update_assignment": "gumbel",
                                "model.prototype.ppc_temperature": 1.0, "model.prototype.proj_norm": "width"}
    proto = [r for r in runs if r.value("model.head") == "nonparametric"]
    changed = sorted(tuple(sorted((k, r.value(k)) for k in official if r.value(k) != official[k]))
                     for r in proto)
    assert changed.count(()) == 1 and len(runs) == 15 and len(proto) == 14
    for key, values in (("model.prototype.num_prototypes", {1, 5, 20}), ("model.prototype.gamma", {0.0, 0.9, 0.99, 0.9999})):
        assert {dict(c).get(key) for c in changed if dict(c).get(key) is not None} == values
    assert (("model.prototype.ppc_weight", 0.0), ("model.prototype.ppd_weight", 0.0)) in changed


def test_smoke_sizes_sit_beside_the_papers_at_k150_and_a_mismatch_is_marked():
    import pandas as pd

    entries = [{"backbone": "resnet101c", "decoder": "fcn", "head": "parametric", "params_M": 68.6},
               {"backbone": "resnet101c", "decoder": "fcn", "head": "nonparametric", "params_M": 68.5},
               {"backbone": "hrnet_w48", "decoder": "hrnet", "head": "parametric", "params_M": 65.9}]
    cell = {"model.decoder_kernel": None, "model.prototype.num_prototypes": 10}
    frame = pd.DataFrame([
        {**cell, "model.backbone": "resnet101c", "model.decoder": "fcn", "model.head": "parametric",
         "num_classes": 19, "params_learnable_with_aux": 68.49e6},
        {**cell, "model.backbone": "resnet101c", "model.decoder": "fcn", "model.head": "parametric",
         "num_classes": 150, "params_learnable_with_aux": 68.59e6},
        {**cell, "model.backbone": "resnet101c", "model.decoder": "fcn", "model.head": "nonparametric",
         "num_classes": 150, "params_learnable_with_aux": 69.04e6},
        {**cell, "model.backbone": "hrnet_w48", "model.decoder": "hrnet", "model.head": "parametric",
         "num_classes": 150, "params_learnable_with_aux": 70.10e6},
        {**cell, "model.backbone": "hrnet_w48", "model.decoder": "hrnet", "model.head": "parametric",
         "model.decoder_kernel": 1, "num_classes": 150, "params_learnable_with_aux": 65.95e6},
        {**cell, "model.backbone": "mit_b0", "model.decoder": "segformer", "model.head": "parametric",
         "num_classes": 150, "params_learnable_with_aux": 3.7e6},  # no paper size: no line
    ])
    lines = smoke.sizes_against_paper(frame, entries).splitlines()
    assert len(lines) == 5 and "K = 150" in lines[0]
    fcn, protoseg, hrnet3, hrnet1 = lines[1:]
    assert "parametric" in fcn and "K=150" in fcn and "68.59" in fcn and "68.6" in fcn and "off" not in fcn
    assert "ProtoSeg M=10" in protoseg and "projection head out" in protoseg
    assert "70.10" in hrnet3 and "+6.4%" in hrnet3 and "more than 1% off" in hrnet3
    assert "(kernel 1)" in hrnet1 and "65.95" in hrnet1 and "off" not in hrnet1
    assert smoke.sizes_against_paper(frame[frame["model.backbone"] == "mit_b0"], entries) == ""
