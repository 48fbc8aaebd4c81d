"""Every metrics.json says which code made it: the git commit of the project (and whether its tracked
files had changes), the versions of the packages that decide the numbers, and Python's. Git may be
missing or the code outside any git tree (an installed wheel): the commit is then None, never an error."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from conftest import ROOT, tiny_spec
from protoseg import engine, provenance


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                          capture_output=True, text=True).stdout.strip()


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@pytest.mark.slow
def test_metrics_json_records_the_commit_and_the_versions_of_the_attempt_that_finished(tmp_path):
    engine.run(tiny_spec(train={"iterations": 2}), tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())["provenance"]
    assert recorded["commit"] == git(ROOT, "rev-parse", "HEAD")
    assert isinstance(recorded["dirty"], bool)
    assert recorded["python"] == platform.python_version()
    versions = recorded["versions"]
    for name in ("torch", "timm", "mmcv", "transformers", "protoseg-harness"):
        assert versions[name] == installed(name), name  # None where it is not installed
    assert versions["torch"] and versions["protoseg-harness"]


def test_a_package_that_is_not_installed_is_recorded_as_none():
    assert provenance.version("no-such-distribution-protoseg-test") is None
    assert provenance.provenance()["versions"]["mmcv"] == installed("mmcv")


def test_a_tracked_folder_gives_its_commit_and_whether_tracked_files_changed(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    git(repo, "init", "-q")
    (repo / "pkg" / "code.py").write_text("x = 1\n")
    git(repo, "add", "pkg/code.py")
    git(repo, "commit", "-q", "-m", "c")
    head = git(repo, "rev-parse", "HEAD")
    assert provenance.git_state(repo / "pkg") == (head, False)
    (repo / "pkg" / "new.py").write_text("")  # an untracked file does not make the tree dirty
    assert provenance.git_state(repo / "pkg") == (head, False)
    (repo / "pkg" / "code.py").write_text("x = 2\n")
    assert provenance.git_state(repo / "pkg") == (head, True)
    assert provenance.git_commit(repo / "pkg") == f"{head}-dirty"


def test_code_that_a_repository_does_not_track_has_no_commit(tmp_path):
    """An installed wheel in a virtual environment inside a user's own repository: that repository's
    commit is not the code's."""
    repo = tmp_path / "project"
    (repo / ".venv" / "site-packages" / "protoseg").mkdir(parents=True)
    git(repo, "init", "-q")
    (repo / ".gitignore").write_text(".venv/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "c")
    assert provenance.git_state(repo / ".venv" / "site-packages" / "protoseg") == (None, None)
    assert provenance.git_commit(tmp_path) is None  # no repository at all


def test_without_git_the_commit_is_none_and_the_rest_is_recorded(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    code = "import json; from protoseg import provenance; print(json.dumps(provenance.provenance()))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": str(empty)})
    assert done.returncode == 0, done.stderr
    recorded = json.loads(done.stdout)
    assert recorded["commit"] is None and recorded["dirty"] is None
    assert recorded["versions"]["torch"] == installed("torch")
