"""Which cells or runs a user means: the `--only` grammar, and run ids given on the command line.

    --only 'head=parametric,seed=0'       AND within one --only (terms apart by commas or spaces)
    --only seed=0 --only seed=1           OR across repeated --only
    --only 'train.seed=0|1'               OR within a term: any of the values after `=`
    --only 'data.mean=[127,127,127]'      commas inside [], {} or quotes belong to the value
    --only id=e630d5 / --only e630d5      a run id prefix (bare: 4 or more hex digits, not all decimal)

A key is a spec path (`model.head`), a unique last part of one (`head`, `num_prototypes`), the
last part of one of the sweep's axes as `status` prints it (`seed` is the axis `train.seed`), or
`preset`. Values are YAML (`seed=0` is the number 0). Anything that could mean two things
(`train.seed=0,1`: hydra's "0 or 1", or a second term `1`?) is an error, never a guess.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

from protoseg import config
from protoseg.io import load_yaml

from .store import SWEEP_NAME, Liveness, Store, StoreError, cannot_tell, load_spec

SPEC_PATHS = tuple(config.flatten(config.DEFAULTS))
RUN_ID = re.compile(r"[0-9a-f]{4,12}")
GRAMMAR = ("AND within one --only ('head=parametric,seed=0'), OR across repeated --only and between "
           "values ('seed=0|1'); run ids as id=PREFIX")


class SelectionError(ValueError):
    """A selection that does not parse, or names no key; nothing was selected."""


def _split(text: str, apart) -> list[str]:
    """`text` split at the characters for which `apart(char)` holds, outside brackets and quotes."""
    parts, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif depth == 0 and apart(char):
            parts.append(current)
            current = ""
            continue
        current += char
    if quote or depth:
        raise SelectionError(f"--only {text!r}: an unclosed {'quote' if quote else 'bracket'}")
    return [*parts, current]


def _terms(text: str) -> list[str]:
    """'a=1,b=2 c=3' -> ['a=1', 'b=2', 'c=3']."""
    return [term for term in _split(text, lambda char: char == "," or char.isspace()) if term]


def _alternatives(value: str) -> list[str]:
    """'0|1' -> ['0', '1']."""
    return _split(value, lambda char: char == "|")


def spec_paths(key: str) -> list[str]:
    """The spec paths that `key` names: itself, or those whose dotted tail it is."""
    key = config.new_name(key, "--only")
    if key in SPEC_PATHS:
        return [key]
    return [path for path in SPEC_PATHS if path.endswith("." + key)]


class Term:
    """One `key=value[|value...]` test."""

    def __init__(self, key: str, values: list, source: str):
        self.key, self.values, self.source = key, values, source
        self.paths = [] if key in ("id", "preset") else spec_paths(key)
        if key not in ("id", "preset") and not self.paths:
            names = sorted({*SPEC_PATHS, *(p.rsplit(".", 1)[-1] for p in SPEC_PATHS), "preset", "id"})
            raise SelectionError(f"--only {source!r}: unknown key '{key}'{config.did_you_mean(key, names)}; "
                                 f"a spec path (model.head), its last part (head), preset or id")

    def path(self, run) -> str:
        """The one spec path this term tests on `run`: unique, or the run's own axis of that name."""
        if len(self.paths) == 1:
            return self.paths[0]
        axes = [p for p in self.paths if p in run.settings]
        if len(axes) == 1:
            return axes[0]
        raise SelectionError(f"--only {self.source!r}: '{self.key}' is ambiguous here: "
                             f"{' or '.join(self.paths)}; write the full path")

    def __call__(self, run) -> bool:
        if self.key == "id":
            return any(run.run_id.startswith(prefix) for prefix in self.values)
        if self.key == "preset":
            return run.settings.get("preset") in self.values
        return run.value(self.path(run)) in self.values


class Selection:
    """A test of a run (a matrix.RunSpec, or any object with run_id, settings and value(path))."""

    def __init__(self, onlys: list[str] | str | None = None):
        onlys = [onlys] if isinstance(onlys, str) else list(onlys or [])
        self.text = " ".join(f"--only {only!r}" for only in onlys)
        self.groups = [self._parse(only) for only in onlys]

    @staticmethod
    def _parse(only: str) -> list[Term]:
        terms: list[Term] = []
        for text in _terms(only):
            key, sep, value = text.partition("=")
            if sep:
                values = _alternatives(value)
                if key.strip() == "id":
                    terms.append(Term("id", [v.strip().lower() for v in values], only))
                else:
                    terms.append(Term(key.strip(), [load_yaml(v) for v in values], only))
                continue
            after = f"; for '{terms[-1].key} is {terms[-1].values[-1]!r} or {text}' write " \
                    f"{terms[-1].key}={'|'.join(map(str, terms[-1].values))}|{text}" if terms else ""
            if not RUN_ID.fullmatch(text.lower()) or text.isdigit():
                raise SelectionError(f"--only {only!r}: '{text}' is neither key=value nor a run id "
                                     f"(id=PREFIX; bare, 4 or more hex digits, not all decimal){after}")
            terms.append(Term("id", [text.lower()], only))
        if not terms:
            raise SelectionError(f"--only {only!r} is empty; {GRAMMAR}")
        return terms

    def __bool__(self) -> bool:
        return bool(self.groups)

    def __call__(self, run) -> bool:
        return not self.groups or any(all(term(run) for term in group) for group in self.groups)


class StoredRun:
    """A run folder as a selection sees it: its id, the settings its status records, its spec's fields."""

    def __init__(self, run_id: str, spec: dict, settings: dict | None = None):
        self.run_id, self.settings = run_id, settings or {}
        self._flat = spec_fields(spec)

    def value(self, path: str):
        return self._flat[path]


def spec_fields(spec: dict) -> dict:
    """A stored spec as {dotted path: value}: renamed fields under their new names, and the fields it
    predates at their first default (config.baseline), so old and new runs compare alike."""
    return {**_baseline(), **{config.new_name(path, None): value for path, value in config.flatten(spec).items()}}


@functools.cache
def _baseline() -> dict:
    """The fields a stored spec predates read as their first default (config.baseline)."""
    return config.flatten(config.baseline())


def find_runs(results: Path, reference: str, sweeps: list[str] | None = None) -> list[Path]:
    """The run folders under `results` that `reference` names: a run folder's path, SWEEP/ID, or a run id
    or its prefix (in every sweep, or in `sweeps`). Several when a prefix is not unique; [] when none."""
    path = Path(reference)
    if (path / "spec.yaml").is_file():
        return [path]
    sweep, _, prefix = reference.rpartition("/")
    if sweep:
        sweeps = [sweep]
    if not RUN_ID.fullmatch(prefix.lower()):
        return []
    folders = [results / s for s in sweeps] if sweeps else \
        sorted(p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")) if results.is_dir() else []
    return sorted(run for folder in folders if folder.is_dir() for run in folder.glob(prefix.lower() + "*")
                  if (run / "spec.yaml").is_file())


def one_run(results: Path, reference: str) -> Path:
    """The one run folder `reference` names (find_runs); SelectionError naming the candidates otherwise."""
    found = find_runs(results, reference)
    if len(found) == 1:
        return found[0]
    if not found:
        raise SelectionError(f"no run '{reference}' under {results}: give a run id (or a prefix of one), "
                             f"SWEEP/RUN_ID or a run folder (`harness status` lists them)")
    shown = ", ".join(f"{p.parent.name}/{p.name}" for p in found[:8])
    raise SelectionError(f"'{reference}' names {len(found)} runs under {results}: {shown}"
                         f"{' ...' if len(found) > 8 else ''}; give more of the id")


def stored_runs(store: Store, rows: list[dict], select: Selection) -> list[dict]:
    """The rows whose run the selection keeps (each run's spec.yaml read only when there is a selection)."""
    if not select:
        return rows
    kept = []
    for row in rows:
        try:
            spec = load_spec(store.run_dir(row["run_id"]))
        except StoreError:
            continue  # no readable spec: it cannot be said to match
        if select(StoredRun(row["run_id"], spec or {}, row.get("settings"))):
            kept.append(row)
    return kept


def finished_runs(target: str, results: Path, select: Selection) -> list[Path]:
    """A run (its folder, SWEEP/ID, or its id or a prefix of one under `results`), or every finished run
    (it has metrics.json) of a sweep given by name or folder, that the selection keeps."""
    path = Path(target)
    if (path / "spec.yaml").is_file() or (path / "metrics.json").is_file():
        return [path]  # evaluate_run says what is wrong with it
    folder = path if path.is_dir() else results / target
    if SWEEP_NAME.fullmatch(folder.name) and folder.is_dir():
        store = Store(folder.parent, folder.name)
        done = [{"run_id": p.parent.name} for p in folder.glob("*/metrics.json") if not p.parent.name.startswith(".")]
        runs = [store.run_dir(row["run_id"]) for row in stored_runs(store, done, select)]
        if not runs:
            matches = f" that matches {select.text}" if select else ""
            raise SelectionError(f"sweep {folder} has no finished run{matches}")
        return sorted(runs)
    return [one_run(results, target)]


def run_of(results: Path, reference: str, liveness: Liveness = cannot_tell) -> tuple[Store, str, dict]:
    """(store, run id, its status row) of the run a reference names (one_run)."""
    folder = one_run(results, reference).resolve()
    store = Store(folder.parent.parent, folder.parent.name, liveness)
    row = next(r for r in store.rows() if r["run_id"] == folder.name)
    return store, folder.name, row
