"""The sbatch file the SLURM backend submits, for a given executor section:
a golden file of the rendered script, and the mapping of executor keys.
Rendering needs no cluster; submitit only checks that an `srun` exists, so a
stand-in `srun` is put on PATH (the real submissions are in test_slurm_backend)."""
from __future__ import annotations

import sys

import pytest

from conftest import ROOT
from harness import matrix
from harness.backends import slurm

pytestmark = pytest.mark.usefixtures("fake_srun")

GOLDEN = ROOT / "tests" / "golden" / "sbatch_example_gpu.sh"




def executor(tmp_path, profile=None, **given) -> dict:
    doc = {"sweep": "golden", "base": {}, "executor": {"backend": "slurm", **given}}
    return matrix.expand_doc(doc, str(tmp_path / "golden.yaml"), profile=profile).executor


def render(tmp_path, ex, count) -> str:
    folder = tmp_path / "results" / "golden" / ".slurm"
    text = slurm.sbatch_script(ex, folder, count, "protoseg-golden")
    return text.replace(str(folder), "{folder}").replace(sys.executable, "{python}")


def test_the_example_gpu_profile_renders_the_golden_sbatch_file(tmp_path):
    ex = executor(tmp_path, profile=str(ROOT / "slurm" / "profiles" / "example-gpu.yaml"), tasks_per_node=4)
    assert render(tmp_path, ex, 12) == GOLDEN.read_text()


def test_executor_keys_become_sbatch_flags(tmp_path):
    ex = executor(tmp_path, partition="a100", account="proj", qos="high", timeout_min=90, cpus_per_task=6,
                  gpus_per_task=2, tasks_per_node=2, mem_gb=48, constraint="ampere", jobs=3, signal_delay_s=300,
                  setup=["module load cuda"], sbatch={"exclude": "node7", "mail-type": "END"})
    text = render(tmp_path, ex, 5)
    for line in ("--partition=a100", "--account=proj", "--qos=high", "--time=90", "--cpus-per-task=6",
                 "--gpus-per-node=4", "--ntasks-per-node=2", "--mem=48GB", "--constraint=ampere",
                 "--array=0-4%3", "--signal=USR2@300", "--exclude=node7", "--mail-type=END"):
        assert f"#SBATCH {line}\n" in text
    assert "\nmodule load cuda\n" in text.split("# command")[0]


def test_one_run_is_a_plain_job_and_unset_keys_are_left_to_the_cluster(tmp_path):
    text = render(tmp_path, executor(tmp_path), 1)
    assert "--array" not in text and "%j_0_log.err" in text
    for flag in ("--partition", "--account", "--qos", "--mem", "--gpus", "--constraint", "--cpus-per-task"):
        assert flag not in text


def test_the_file_overrides_the_profile_and_a_bad_profile_value_names_the_profile(tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text("partition: gpu\ntimeout_min: 600\n")
    assert executor(tmp_path, profile=str(profile), timeout_min=30)["timeout_min"] == 30
    assert executor(tmp_path, profile=str(profile))["partition"] == "gpu"
    profile.write_text("timeout_min: soon\n")
    with pytest.raises(matrix.MatrixError, match=r"executor.timeout_min is 'soon' \(from profile .*mine.yaml\)"):
        executor(tmp_path, profile=str(profile))
    profile.write_text("partiton: gpu\n")
    with pytest.raises(matrix.MatrixError, match=r"mine.yaml: unknown key 'partiton' \(did you mean 'partition'\?\)"):
        executor(tmp_path, profile=str(profile))
    with pytest.raises(matrix.MatrixError, match=r"--profile nosuch: .*profiles there: dev, example-gpu"):
        executor(tmp_path, profile="nosuch")
