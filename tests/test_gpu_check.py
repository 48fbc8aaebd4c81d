"""tests/benchmarks/gpu_check.sh: the one-command GPU check runs on CPU too, at small sizes, and prints
every figure it promises."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_gpu_check_prints_step_times_fps_and_prototype_step_ratios_on_cpu():
    proc = subprocess.run([str(ROOT / "tests" / "benchmarks" / "gpu_check.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    heads = {head: (float(step), float(fps)) for head, step, fps in
             re.findall(r"^(parametric|nonparametric)\s+([0-9.]+)\s+[0-9.]+\s+([0-9.]+)", out, re.M)}
    assert set(heads) == {"parametric", "nonparametric"} and all(min(v) > 0 for v in heads.values())
    assert re.search(r"^nonparametric / parametric training step: [0-9.]+x", out, re.M)
    ratios = dict(re.findall(r"^\s+(19|150)\s+cpu\s+[0-9.]+\s+[0-9.]+\s+([0-9.]+)x", out, re.M))
    assert set(ratios) == {"19", "150"} and all(float(r) > 0 for r in ratios.values())
