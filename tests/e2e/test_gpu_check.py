"""benchmarks/gpu_check.sh: the one-command GPU check runs on CPU too, at small sizes, and prints
every figure it promises."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_gpu_check_prints_step_times_fps_and_prototype_step_ratios_on_cpu():
    proc = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    heads = {head: (float(step), float(fps)) for head, step, fps in
             re.findall(r"^(parametric|nonparametric)\s+([0-9.]+)\s+[0-9.]+\s+([0-9.]+)", out, re.M)}
    assert set(heads) == {"parametric", "nonparametric"} and all(min(v) > 0 for v in heads.values())
    assert re.search(r"^nonparametric / parametric training step: [0-9.]+x", out, re.M)
    ratios = {(k, weights): float(r) for k, weights, r in
              re.findall(r"^\s+(19|150)\s+cpu\s+(bool|real)\s+[0-9.]+\s+[0-9.]+\s+([0-9.]+)x", out, re.M)}
    assert set(ratios) == {(k, w) for k in ("19", "150") for w in ("bool", "real")}  # both weight paths
    assert all(r > 0 for r in ratios.values())
