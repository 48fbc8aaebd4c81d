"""The spec's history: renamed keys and changed defaults, so old specs keep meaning what they meant.

- Adding a key whose default reproduces the old behaviour needs no entry; it
  changes no run id (see harness/identity.py).
- Renaming a key or changing what a default means adds a spec version:
  `{"version": 3, "renamed": {"old.path": "new.path"}, "defaults": {"model.x": OLD_DEFAULT}}`.
  An old name is accepted with one notice line per file; a sweep planned at an
  older version keeps the old defaults, with a notice (harness/matrix.py).
"""
from __future__ import annotations

import copy
import sys
from typing import Any

from . import fields
from .paths import flatten, set_path

_PROTOTYPE_KEYS = ("embed_dim", "num_prototypes", "gamma", "update_prototypes", "update_assignment",
                   "sinkhorn_epsilon", "sinkhorn_iterations", "proj_norm", "mask_norm", "ppc_weight", "ppd_weight",
                   "ppc_temperature")

HISTORY: list[dict] = [  # one entry per version after 1, oldest first
    {"version": 2, "renamed": {f"model.{key}": f"model.prototype.{key}" for key in _PROTOTYPE_KEYS}},
]
SPEC_VERSION = HISTORY[-1]["version"]

_told: set = set()


def notice(text: str, once_per=None) -> None:
    """A one-line notice on stderr, once per process (per `once_per`, when given, else per text)."""
    key = text if once_per is None else once_per
    if key not in _told:
        _told.add(key)
        print(f"notice: {text}", file=sys.stderr)


def new_name(dotted: str, source: str | None = "<spec>") -> str:
    """The current name of a spec path that may have been renamed. With a `source`, the first old name
    it uses gets one notice line (per source and version); None renames silently (a stored run's spec)."""
    for entry in HISTORY:
        if dotted in entry.get("renamed", {}):
            new = entry["renamed"][dotted]
            if source is not None:
                notice(f"{source}: '{dotted}' is now '{new}' (spec version {entry['version']}"
                       f"{_moved_text(entry)}); write the new names to silence this",
                       once_per=(source, entry["version"]))
            dotted = new
    return dotted


def _moved_text(entry: dict) -> str:
    sections = {new.rsplit(".", 1)[0] for new in entry.get("renamed", {}).values()}
    if len(entry.get("renamed", {})) > 1 and len(sections) == 1:
        return f", with every key now under {sections.pop()}"
    return ""


def rename_keys(spec: dict, source: str | None = "<spec>") -> dict:
    """A copy of a (partial) nested spec with old key names moved to their new place."""
    if not isinstance(spec, dict):
        return spec
    flat = flatten(spec)
    if all(new_name(path, None) == path for path in flat):
        return spec  # as given, empty sections included (their errors name them)
    out: dict = {}
    for path, value in flat.items():
        set_path(out, new_name(path, source), value)
    return out


def first_names() -> dict[str, str]:
    """{current name: first name} of every renamed field."""
    first: dict[str, str] = {}
    for entry in HISTORY:
        for old, new in entry.get("renamed", {}).items():
            first[new] = first.pop(old, old)
    return first


def changed_defaults(since: int) -> dict[str, Any]:
    """{path: the default it had at spec version `since`} for every default changed after it."""
    old: dict[str, Any] = {}
    for entry in reversed(HISTORY):
        if entry["version"] > since:
            old.update(entry.get("defaults", {}))
    return old


def baseline() -> dict:
    """DEFAULTS with every changed default at its first value: what a key meant when it was added."""
    spec = copy.deepcopy(fields.DEFAULTS)
    for path, value in changed_defaults(0).items():
        set_path(spec, path, copy.deepcopy(value))
    return spec
