"""Files the harness writes get the mode a plain open() gives: the umask decides, so a group can share them."""
import os
import stat
import subprocess

import pytest

from conftest import ROOT, harness_command, tiny_experiment
from harness.store import Store, owner
from protoseg.io import atomic_write_bytes


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _no_proc(path, *args, **kwargs):
    raise FileNotFoundError(path)


@pytest.mark.parametrize("umask", [0o002, 0o077])
@pytest.mark.parametrize("proc", [True, False], ids=["proc", "os.umask"])
def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path, monkeypatch, umask, proc):
    if not proc:
        monkeypatch.setattr("protoseg.io.open", _no_proc, raising=False)  # as where /proc/self/status is not
    before = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "atomic", b"x")
        atomic_write_bytes(tmp_path / "atomic", b"y")  # replacing a file
        with open(tmp_path / "plain", "w"):
            pass
        assert os.umask(umask) == umask  # left as it was
    finally:
        os.umask(before)
    assert _mode(tmp_path / "atomic") == _mode(tmp_path / "plain") == 0o666 & ~umask


def test_a_claim_obeys_the_umask(tmp_path):
    store = Store(tmp_path, "sweep")
    store.prepare("run", {}, {})
    before = os.umask(0o002)
    try:
        assert store.claim("run", owner())
    finally:
        os.umask(before)
    assert _mode(store.run_dir("run") / "claim") == 0o664


def _sweep_and_report(tmp_path, umask: int) -> dict:
    """`harness run` and `harness report --out --plots` under `umask`; the mode of every file they wrote."""
    experiment = tiny_experiment(tmp_path, "modes", {"model.head": ["nonparametric"]}, None, 2,
                                 {"backend": "local", "jobs": 1})
    results = tmp_path / "results"
    for args in (("run", experiment), ("report", "modes", "--out", tmp_path / "table.md",
                                       "--plots", tmp_path / "figures")):
        proc = subprocess.run(harness_command(*args, results=results), cwd=ROOT, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL, preexec_fn=lambda: os.umask(umask))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    files = [p for p in [*results.rglob("*"), *(tmp_path / "figures").rglob("*")] if p.is_file()]
    assert any(p.name == "metrics.json" for p in files) and any(p.suffix == ".pt" for p in files)
    assert any(p.suffix == ".png" for p in files)
    return {p.relative_to(tmp_path): _mode(p) for p in [*files, tmp_path / "table.md"]}


@pytest.mark.slow
def test_a_group_shares_what_a_sweep_writes_under_umask_002(tmp_path):
    modes = _sweep_and_report(tmp_path, 0o002)
    assert {p: oct(m) for p, m in modes.items() if m & 0o060 != 0o060} == {}
    assert {p: oct(m) for p, m in modes.items() if m & 0o002} == {}


@pytest.mark.slow
def test_umask_077_keeps_what_a_sweep_writes_private(tmp_path):
    modes = _sweep_and_report(tmp_path, 0o077)
    assert {p: oct(m) for p, m in modes.items() if m != 0o600} == {}
