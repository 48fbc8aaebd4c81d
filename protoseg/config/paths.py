"""Dotted paths into a nested spec ('model.prototype.gamma') and command-line assignments."""
from __future__ import annotations


def flatten(spec: dict, prefix: str = "") -> dict:
    """{dotted path: value} of a nested spec."""
    out = {}
    for key, value in spec.items():
        if isinstance(value, dict):  # a section: no field takes a mapping
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + str(key)] = value
    return out


def set_path(spec: dict, dotted: str, value) -> dict:
    """spec['a']['b'] = value for 'a.b', making the sections that are missing; returns spec."""
    *parents, leaf = dotted.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return spec


_MISSING = object()


def get(spec: dict, dotted: str, default=_MISSING):
    """spec['a']['b'] for 'a.b' (`default` when the path does not exist)."""
    node = spec
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _MISSING:
                raise KeyError(dotted)
            return default
        node = node[part]
    return node
