"""Which code produced a result: the git commit of the project's source (and whether its tree had
changes), the versions of the packages that decide the numbers, and Python's.

Nothing here raises: git may be missing, the code may be an installed wheel outside any git tree (or
inside someone else's, e.g. a virtual environment in a user's own repository: the commit is then None,
since that repository does not hold this code), and a package may not be installed (its version is
None)."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

# the distributions whose versions a metrics.json records: the model and counting stack and the project
# itself (pyproject.toml's name); mmcv is installed as either mmcv or mmcv-lite, so both are named
DISTRIBUTIONS = ("protoseg-harness", "torch", "torchvision", "timm", "mmcv", "mmcv-lite", "mmengine",
                 "transformers", "numpy")
_PACKAGE = Path(__file__).resolve().parent


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):  # no git, no such folder, a hung file system
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(folder: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git work tree whose tracked files include `folder`'s (default: the protoseg
    package, so the project's code); (None, None) when git is absent or the repository tracks nothing
    there. `dirty`: a tracked file differs from the commit (untracked files do not count)."""
    folder = Path(folder).resolve() if folder else _PACKAGE
    # a folder whose files the repository does not track is not its code (an installed wheel in a
    # virtual environment inside another repository)
    if not _git(folder, "ls-files", "--", "."):
        return None, None
    commit = _git(folder, "rev-parse", "HEAD")
    if not commit:
        return None, None
    changes = _git(folder, "status", "--porcelain", "--untracked-files=no")
    return commit, (None if changes is None else bool(changes))


def git_commit(folder: str | Path | None = None) -> str | None:
    """The commit as one word: "SHA", "SHA-dirty" when tracked files have changes, None outside git."""
    commit, dirty = git_state(folder)
    return None if commit is None else commit + ("-dirty" if dirty else "")


def version(distribution: str) -> str | None:
    """The installed version of `distribution` (a pip name), None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
    except Exception:  # a broken installation's metadata: recorded as unknown, never an error
        return None


def provenance() -> dict:
    """{"commit", "dirty", "versions": {distribution: version or None}, "python"}: for metrics.json."""
    commit, dirty = git_state()
    return {"commit": commit, "dirty": dirty, "versions": {name: version(name) for name in DISTRIBUTIONS},
            "python": platform.python_version()}
