"""Checking a run spec against the field table: unknown keys, wrong types, values out of range,
fields that disagree with each other; every error names the source, the key path and what is valid."""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Mapping

from ..io import load_yaml, read_yaml
from ..registry import DATASETS
from ..text import did_you_mean
from . import fields as table
from .fields import ANY_LENGTH, DECODER_OPTIONS, PROTOTYPE_SECTION, UNTYPED, in_section
from .history import rename_keys
from .paths import flatten


class SpecError(ValueError):
    """An invalid run spec: the message names the source, the key and what is valid."""


def _merge(default: dict, given: dict, path: str, source: str) -> dict:
    out = copy.deepcopy(default)
    if not isinstance(given, dict):
        raise SpecError(f"{source}: '{path or 'spec'}' must be a mapping, got {type(given).__name__}")
    for key, value in given.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in default:
            raise SpecError(f"{source}: unknown key '{full}'{did_you_mean(str(key), default)}; "
                            f"valid keys: {', '.join(default)}")
        if isinstance(default[key], dict):
            out[key] = _merge(default[key], value, full, source)
        else:
            out[key] = check_value(full, value, source)
    return out


def _typed(full: str, default, value, source: str):
    """`value` in the default's type (an int given for a float becomes a float); SpecError otherwise."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list) and (len(value) > 0 if ANY_LENGTH in table.FIELDS[full].tags
                                          else len(value) == len(default))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise SpecError(f"{source}: '{full}' = {value!r} is not valid; expected a value like "
                        f"{default!r} ({type(default).__name__})")
    return value


def check_value(full: str, value, source: str = "<spec>"):
    """One field's value, type and range checked (floats given as ints become floats); SpecError names it."""
    field = table.FIELDS[full]
    if field.choices is not None and value not in field.choices:
        raise SpecError(f"{source}: '{full}' is {value!r}{did_you_mean(str(value), field.choices)}; "
                        f"valid: {', '.join(map(str, field.choices))}")
    if UNTYPED not in field.tags and field.default is not None:
        value = _typed(full, field.default, value, source)
    if value is not None and field.check is not None:
        ok, valid = field.check
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            raise SpecError(f"{source}: '{full}' is {value!r}; valid: {valid}")
    return value


def num_classes(fields: Mapping[str, Any]) -> int | None:
    """K of a spec's dataset, known without loading it; `fields` maps dotted paths to values."""
    if fields["data.dataset"] == "synthetic":
        return fields["data.synthetic.num_classes"]
    return DATASETS[fields["data.dataset"]].num_classes


CROSS_FIELDS = ("data.dataset", "data.synthetic.num_classes", "model.class_weights", "data.root")


def check_spec(fields: Mapping[str, Any], source: str = "<spec>") -> None:
    """The checks that relate fields (CROSS_FIELDS) of a resolved spec; `fields` maps dotted paths to values."""
    weights, k, dataset = fields["model.class_weights"], num_classes(fields), fields["data.dataset"]
    if weights is not None and k is not None and len(weights) != k:
        raise SpecError(f"{source}: 'model.class_weights' has {len(weights)} values; valid: null or a list of "
                        f"K = {k} numbers (one per class of data.dataset {dataset!r})")
    if DATASETS[dataset].needs_root and not fields["data.root"]:
        raise SpecError(f"{source}: 'data.root' is not set; data.dataset {dataset!r} needs the folder that holds it")


def resolve(spec: dict | None = None, source: str = "<spec>", stored: bool = False) -> dict:
    """Return a full copy of `spec` with every default filled in; raise SpecError when invalid.
    Old key names are moved to their new place, with a notice unless the spec is `stored` (a run's own)."""
    resolved = _merge(table.DEFAULTS, rename_keys(spec or {}, None if stored else source), "", source)
    check_spec(flatten(resolved), source)
    return resolved


def load(path: str | Path) -> dict:
    """Read a YAML run spec and resolve it."""
    return resolve(read_yaml(path, "spec file", SpecError), source=str(path))


def parse_assignments(items: list[str], error: type[Exception] = SpecError) -> list[tuple[str, Any]]:
    """Command-line 'key.path=value' items -> [(key.path, value parsed as YAML)]."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise error(f"--set {item!r}: expected key.path=value, e.g. model.head=parametric")
        out.append((key.strip(), load_yaml(value)))
    return out


def unused_fields(fields: Mapping[str, Any]) -> tuple[str, ...]:
    """The fields that the spec's other choices make irrelevant: the prototype section under a parametric
    head, and the options of every decoder but model.decoder. Cells that differ only there are one run."""
    return _unused(fields["model.head"], fields["model.decoder"])


@functools.cache
def _unused(head: str, decoder: str) -> tuple[str, ...]:
    unused = tuple(path for path in in_section(DECODER_OPTIONS) if path.split(".")[2] != decoder)
    return unused + (in_section(PROTOTYPE_SECTION) if head == "parametric" else ())
