"""The field reference of docs/spec.md, written from the field table (so the page cannot drift from it).

    python -m protoseg.config.reference docs/spec.md    # rewrite the tables between the markers
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..io import atomic_write_text
from .fields import FIELDS, UNTYPED, Field

BEGIN, END = "<!-- fields: begin (python -m protoseg.config.reference docs/spec.md) -->", "<!-- fields: end -->"


def _value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`" if isinstance(value, str) else str(value)


def _valid(f: Field) -> str:
    if f.choices is not None:
        return ", ".join(f"`{c}`" for c in f.choices)
    if f.check is not None:
        return f.check[1]
    if isinstance(f.default, bool):
        return "true, false"
    return "any" if UNTYPED in f.tags or f.default is None else type(f.default).__name__


def _section(path: str) -> str:
    return path.rsplit(".", 1)[0]


def markdown() -> str:
    """One table per section, fields in table order."""
    out: list[str] = []
    current = None
    for path, f in FIELDS.items():
        if _section(path) != current:
            current = _section(path)
            out += ["", f"### {current}", "", "| key | default | valid | meaning |", "| --- | --- | --- | --- |"]
        doc = f.doc.replace("|", "\\|")
        out.append(f"| `{path}` | {_value(f.default)} | {_valid(f).replace('|', chr(92) + '|')} | {doc} |")
    return "\n".join(out[1:]) + "\n"


def rewrite(page: str) -> str:
    """`page` with the text between the markers replaced by `markdown()`."""
    head, sep, rest = page.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise ValueError(f"the page has no '{BEGIN}' ... '{END}' markers")
    return f"{head}{BEGIN}\n{markdown()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    path = Path((argv or sys.argv[1:] or ["docs/spec.md"])[0])
    atomic_write_text(path, rewrite(path.read_text()))
    print(f"wrote the field tables of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
