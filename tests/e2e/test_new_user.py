"""What a new user meets (issue 18): one selection grammar on every verb, status and report that count
honestly, runs named by id against --results, `show` and `diff`, weights checked at plan time,
`--version`, examples in every `--help`, and an estimate of what is left."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import FIXTURES, ROOT, run_harness, tiny_experiment
from harness import estimate
from harness.selection import Selection, SelectionError, StoredRun

CAMVID = ROOT / "results" / "camvid"
LITE0_PARAMETRIC = ("e630d51a9ce1", "160d8c2b0264", "d59b00522bbd")  # seeds 0, 1, 2 of the committed study
LITE0_ARGMAX = ("876c21b6624b", "70dcb2a5ffc6", "6db480727316")
LITE0_GUMBEL = ("20f37570a48c", "e7259ecabe1a", "35bab871c12b")


def quick_experiment(folder: Path, **extra) -> Path:
    """2 heads x 2 seeds (3 distinct cells after the parametric head's M collapses: 4)."""
    return tiny_experiment(folder, "pick", {"model.head": ["parametric", "nonparametric"], "train.seed": [0, 1]},
                           None, 2, {"backend": "local", "jobs": 1}, **extra)


def table_rows(stdout: str) -> list[str]:
    """The Markdown table's body rows."""
    return [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| Backbone")]


def planned(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines() if line.startswith("  ") and len(line.split()[0]) == 12]


def study_copy(results: Path, run_ids, sweep: str = "camvid") -> Path:
    """Runs of the committed CamVid study (spec.yaml, metrics.json, train.log; no status.json) in `results`."""
    folder = results / sweep
    for rid in run_ids:
        shutil.copytree(CAMVID / rid, folder / rid)
    shutil.copy(CAMVID / "sweep.json", folder / "sweep.json")
    return folder


# ---- the --only grammar -------------------------------------------------------------------------------

def test_hydra_style_comma_list_is_an_error_that_shows_the_spelling(tmp_path):
    proc = run_harness("run", quick_experiment(tmp_path), "--dry-run", "--only", "train.seed=0,1",
                       results=tmp_path / "r")
    assert proc.returncode == 2 and "train.seed=0|1" in proc.stderr, proc.stderr


def test_repeated_only_is_or_and_terms_within_one_are_and(tmp_path):
    path = quick_experiment(tmp_path)
    one = run_harness("run", path, "--dry-run", "--only", "head=parametric,seed=1", results=tmp_path / "r")
    assert one.returncode == 0 and len(planned(one.stdout)) == 1, one.stdout + one.stderr
    both = run_harness("run", path, "--dry-run", "--only", "head=parametric", "--only", "seed=1",
                       results=tmp_path / "r")
    assert both.returncode == 0 and len(planned(both.stdout)) == 3, both.stdout  # 2 parametric + nonparametric seed 1
    alternatives = run_harness("run", path, "--dry-run", "--only", "seed=0|1,head=nonparametric",
                               results=tmp_path / "r")
    assert len(planned(alternatives.stdout)) == 2, alternatives.stdout


def test_short_names_that_status_prints_select_and_typos_get_a_suggestion(tmp_path):
    path = quick_experiment(tmp_path)
    proc = run_harness("run", path, "--dry-run", "--only", "head=parametric", results=tmp_path / "r")
    assert proc.returncode == 0 and len(planned(proc.stdout)) == 2, proc.stderr
    typo = run_harness("run", path, "--dry-run", "--only", "haed=parametric", results=tmp_path / "r")
    assert typo.returncode == 2 and "did you mean 'head'" in typo.stderr


def test_a_run_id_is_explicit_or_an_unambiguous_bare_prefix(tmp_path):
    path = quick_experiment(tmp_path)
    first = planned(run_harness("run", path, "--dry-run", results=tmp_path / "r").stdout)[0]
    for term in (f"id={first[:6]}", first[:6] if not first[:6].isdigit() else f"id={first[:6]}"):
        proc = run_harness("run", path, "--dry-run", "--only", term, results=tmp_path / "r")
        assert planned(proc.stdout) == [first], proc.stderr
    decimal = run_harness("run", path, "--dry-run", "--only", "1234", results=tmp_path / "r")
    assert decimal.returncode == 2 and "id=PREFIX" in decimal.stderr


def test_a_value_with_commas_inside_brackets_is_one_value():
    select = Selection(["data.mean=[127,127,127],head=parametric"])
    run = StoredRun("abcdef012345", {"model": {"head": "parametric"}, "data": {"mean": [127, 127, 127]}})
    other = StoredRun("abcdef012346", {"model": {"head": "parametric"}})
    assert select(run) and not select(other)


def test_a_short_name_of_two_spec_paths_is_an_error_unless_the_run_has_that_axis():
    select = Selection(["seed=1"])  # train.seed and data.synthetic.seed
    axis = StoredRun("abcdef012345", {"train": {"seed": 1}}, {"train.seed": 1})
    assert select(axis)
    with pytest.raises(SelectionError, match="train.seed"):
        select(StoredRun("abcdef012345", {"train": {"seed": 1}}))


def test_status_report_and_evaluate_take_the_same_selection(tmp_path):
    results = tmp_path / "results"
    study_copy(results, LITE0_PARAMETRIC + LITE0_ARGMAX)
    status = run_harness("status", "camvid", "--only", "update_assignment=argmax", "--only", "seed=0",
                         results=results)
    assert status.returncode == 0 and "4 runs: 4 done" in status.stdout, status.stdout + status.stderr
    report = run_harness("report", "camvid", "--only", "head=parametric", results=results)
    methods = [row.split("|")[2].strip() for row in table_rows(report.stdout)]
    assert report.returncode == 0 and methods == ["parametric"], report.stdout
    bad = run_harness("evaluate", "camvid", "--only", "seed=0,1", results=results)
    assert bad.returncode == 2 and "seed=0|1" in bad.stderr


# ---- status -------------------------------------------------------------------------------------------

def test_status_counts_run_folders_only_and_names_runs_without_status_json(tmp_path):
    results = tmp_path / "results"
    folder = study_copy(results, LITE0_PARAMETRIC + LITE0_ARGMAX + LITE0_GUMBEL)
    (folder / "figures").mkdir()  # where the README tells you to write figures
    (folder / "figures" / "per_class_iou.png").write_bytes(b"png")
    proc = run_harness("status", "camvid", results=results)
    assert proc.returncode == 0 and "9 runs: 9 done" in proc.stdout, proc.stdout
    argmax = [line for line in proc.stdout.splitlines() if LITE0_ARGMAX[1] in line][0]
    assert "update_assignment=argmax" in argmax and "seed=1" in argmax and "mIoU 39.65" in argmax, argmax
    parametric = [line for line in proc.stdout.splitlines() if LITE0_PARAMETRIC[0] in line][0]
    assert "head=parametric" in parametric and "update_assignment" not in parametric  # means nothing to it


def test_status_of_an_experiment_lists_its_cells_not_created_yet(tmp_path):
    path = quick_experiment(tmp_path)
    proc = run_harness("status", path, results=tmp_path / "results")
    assert proc.returncode == 0 and "4 runs: 4 new" in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.count("not created yet") == 4


# ---- report -------------------------------------------------------------------------------------------

def test_report_counts_runs_per_row_and_names_the_unfinished_ones(tmp_path):
    results = tmp_path / "results"
    folder = study_copy(results, LITE0_PARAMETRIC + LITE0_ARGMAX)
    (folder / LITE0_ARGMAX[2] / "metrics.json").unlink()  # one seed still running, say
    proc = run_harness("report", "camvid", results=results)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("|")[2].strip().split(" (")[0]: line for line in table_rows(proc.stdout)}
    assert [cell.strip() for cell in rows["parametric"].split("|")][3] == "3"
    argmax = [cell.strip() for cell in rows["ProtoSeg M=10"].split("|")]
    assert argmax[3] == "2 of 3", rows
    assert "Not finished: 1 of 6 runs" in proc.stdout and LITE0_ARGMAX[2] in proc.stdout


def test_a_method_with_no_finished_run_keeps_its_row(tmp_path):
    results = tmp_path / "results"
    folder = study_copy(results, LITE0_PARAMETRIC + LITE0_ARGMAX)
    for rid in LITE0_ARGMAX:
        (folder / rid / "metrics.json").unlink()
    proc = run_harness("report", "camvid", results=results)
    row = [line for line in table_rows(proc.stdout) if "ProtoSeg" in line]
    assert row and "| 0 of 3 " in row[0], proc.stdout


def test_report_without_a_sweep_reports_each_sweep_on_its_own_smoke_marked(tmp_path):
    results = tmp_path / "results"
    study_copy(results, LITE0_PARAMETRIC)
    study_copy(results, LITE0_ARGMAX, sweep="camvid-smoke")
    proc = run_harness("report", results=results)
    assert proc.returncode == 0, proc.stderr
    real, smoke = proc.stdout.split("## sweep camvid-smoke")
    assert "## sweep camvid" in real and "SMOKE" not in real
    assert [row.split("|")[2].strip() for row in table_rows(real)] == ["parametric"]
    assert "SMOKE" in smoke and [row.split("|")[2].strip() for row in table_rows(smoke)] == ["ProtoSeg M=10"]


# ---- runs by id: evaluate, show, diff ------------------------------------------------------------------

def test_show_resolves_an_id_prefix_against_results_and_prints_settings_and_log(tmp_path):
    results = tmp_path / "results"
    study_copy(results, LITE0_PARAMETRIC + LITE0_ARGMAX + LITE0_GUMBEL)
    proc = run_harness("show", LITE0_ARGMAX[0][:6], "--lines", "2", results=results)
    assert proc.returncode == 0, proc.stderr
    assert "update_assignment=argmax" in proc.stdout and "done: mIoU" in proc.stdout
    assert "model.prototype.update_assignment: 'argmax'" in proc.stdout  # the spec fields that differ from the defaults


def test_an_ambiguous_or_unknown_run_is_an_error_naming_candidates(tmp_path):
    results = tmp_path / "results"
    study_copy(results, LITE0_PARAMETRIC)
    study_copy(results, LITE0_PARAMETRIC[:1], sweep="again")
    ambiguous = run_harness("show", LITE0_PARAMETRIC[0], results=results)
    assert ambiguous.returncode == 2 and "2 runs" in ambiguous.stderr and "again/" in ambiguous.stderr
    assert run_harness("show", f"again/{LITE0_PARAMETRIC[0]}", results=results).returncode == 0
    unknown = run_harness("show", "ffffff", results=results)
    assert unknown.returncode == 2 and "no run 'ffffff'" in unknown.stderr


def test_diff_prints_the_fields_that_differ(tmp_path):
    results = tmp_path / "results"
    study_copy(results, (LITE0_PARAMETRIC[0], LITE0_ARGMAX[1]))
    proc = run_harness("diff", LITE0_PARAMETRIC[0], LITE0_ARGMAX[1], results=results)
    assert proc.returncode == 0, proc.stderr
    fields = [line.split()[0] for line in proc.stdout.splitlines()[2:]]
    assert fields == ["model.head", "model.prototype.update_assignment", "train.seed"], proc.stdout


def test_evaluate_takes_a_run_id_under_results(tmp_path):
    results = tmp_path / "results"
    study_copy(results, LITE0_PARAMETRIC[:1])
    proc = run_harness("evaluate", LITE0_PARAMETRIC[0][:8], "--root", str(tmp_path / "nowhere"), results=results)
    # found: it is evaluated, and stops at the data root given (not at "the run is not finished")
    assert proc.returncode == 2 and "not finished" not in proc.stderr and "nowhere is not a folder" in proc.stderr, \
        proc.stderr


# ---- plan-time checks, version, help, estimate ------------------------------------------------------

def test_a_missing_weight_file_stops_the_plan_before_anything_is_created(tmp_path):
    path = quick_experiment(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["base"]["model"]["pretrained"] = str(tmp_path / "missing.pth")
    path.write_text(yaml.safe_dump(doc))
    proc = run_harness("run", path, results=tmp_path / "results")
    assert proc.returncode == 2 and "model.pretrained" in proc.stderr and "missing.pth" in proc.stderr
    assert not (tmp_path / "results" / "pick").exists()


def test_an_unset_weights_variable_is_a_warning_in_a_dry_run_and_an_error_in_a_run(tmp_path):
    path = quick_experiment(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["base"]["model"]["pretrained"] = "${PROTOSEG_TEST_UNSET_WEIGHTS}/r18.pth"
    path.write_text(yaml.safe_dump(doc))
    dry = run_harness("run", path, "--dry-run", results=tmp_path / "results")
    assert dry.returncode == 0 and "PROTOSEG_TEST_UNSET_WEIGHTS" in dry.stderr
    real = run_harness("run", path, results=tmp_path / "results")
    assert real.returncode == 2 and "PROTOSEG_TEST_UNSET_WEIGHTS" in real.stderr


def test_version_and_examples_in_every_help():
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "--version"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("harness "), proc.stdout + proc.stderr
    for verb in ("run", "status", "cancel", "report", "estimate", "evaluate", "show", "diff"):
        text = subprocess.run([sys.executable, "-m", "harness.cli", verb, "--help"], cwd=ROOT, capture_output=True,
                              text=True).stdout
        assert "examples:" in text and f"harness {verb} " in text, verb


def test_wall_clock_fills_the_slots_longest_first():
    assert estimate.wall_clock([3.0, 2.0, 2.0, 1.0], 2) == 4.0
    assert estimate.wall_clock([3.0, 2.0, 2.0, 1.0], 1) == 8.0
    assert estimate.parallelism({"backend": "slurm", "jobs": None}, 5) == 5
    assert estimate.parallelism({"backend": "local", "jobs": 8}, 3) == 3


def test_estimate_leaves_out_done_cells_and_gives_the_wall_clock(tmp_path):
    path = quick_experiment(tmp_path)
    results = tmp_path / "results"
    ids = planned(run_harness("run", path, "--dry-run", results=results).stdout)
    done = results / "pick" / ids[0]
    done.mkdir(parents=True)
    fixture = FIXTURES / "results_v1" / "v1sweep" / "28c0b06337a5"
    shutil.copy(fixture / "metrics.json", done / "metrics.json")
    assert json.loads((done / "metrics.json").read_text())["mIoU"] is not None
    proc = run_harness("estimate", path, "--steps", "1", results=results)
    assert proc.returncode == 0, proc.stderr
    assert "1 cell(s) done" in proc.stdout and f"{len(ids) - 1} cell(s)," in proc.stdout, proc.stdout
    assert ids[0] not in proc.stdout.split("left out")[1] and "wall-clock:" in proc.stdout
