"""Experiment YAML -> fully resolved run specs with stable run ids.

    sweep: quickstart                 # results/<sweep>/
    base: {model: {...}, data: {...}} # a partial run spec
    parts: {r18: &r18 {...}}          # ignored: a place for YAML anchors that presets merge (<<: *r18)
    presets:                          # named bundles of spec paths
      r18: {model.backbone: resnet18, train.lr: 0.01}
    matrix:                           # spec path -> list of values; cartesian product
      preset: [r18]
      model.head: [parametric, nonparametric]
    include: [{...}]                  # extra cells (axis values), after the product
    exclude: [{...}]                  # drop cells that match every given value
    executor: {backend: local, jobs: 2}

Every cell is resolved against `protoseg.config` and validated before
anything runs; an error names the file, the key path and the valid choices.
"""
from __future__ import annotations

import collections
import copy
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from protoseg import config
from protoseg.io import expand_env, read_yaml
from protoseg.registry import NEEDS_ROOT

from . import smoke
from .identity import Hasher
from .labels import settings_text
from .store import StoreError, check_sweep_name

TOP_KEYS = ("sweep", "description", "base", "parts", "presets", "matrix", "include", "exclude", "executor")

PROFILES = Path(__file__).resolve().parent.parent / "slurm" / "profiles"


class MatrixError(ValueError):
    """An invalid experiment file; nothing has been started."""


class RunSpec:
    """One cell of a sweep: its run id, its axis values and its fully resolved run spec
    (protoseg.config), kept as the changes to the sweep's base and built when read."""

    __slots__ = ("run_id", "settings", "_base", "_flat", "_delta")

    def __init__(self, run_id: str, spec: dict, settings: dict | None = None,
                 delta: dict | None = None, flat_base: dict | None = None):
        self.run_id, self.settings = run_id, settings or {}
        self._base, self._delta = spec, delta or {}
        self._flat = flat_base if flat_base is not None else config.flatten(spec)

    def value(self, dotted: str):
        """One field of the spec, without building it; KeyError for an unknown path."""
        return self._delta[dotted] if dotted in self._delta else self._flat[dotted]

    @property
    def spec(self) -> dict:
        """A fresh copy of the resolved spec."""
        spec = copy.deepcopy(self._base)
        for path, value in self._delta.items():
            config.set_path(spec, path, copy.deepcopy(value))
        return spec


@dataclass
class Sweep:
    name: str
    source: str
    runs: list[RunSpec]             # the selected cells (all of them without a `select`)
    executor: dict
    axes: list[str]
    description: str = ""
    cells: int = 0                  # distinct runs of the whole matrix
    product: str = ""               # the count from the axes, before exclude and deduplication


def _check_path(dotted: str, source: str, where: str) -> str:
    """The current name of a spec path (renamed ones with a notice); MatrixError when unknown."""
    dotted = config.new_name(dotted, source)
    schema, parts = config.DEFAULTS, dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(schema, dict) or part not in schema:
            valid = list(schema) if isinstance(schema, dict) else []
            raise MatrixError(f"{source}: {where}: unknown spec path '{dotted}'"
                              f"{config.did_you_mean(part, valid)}; valid at '{'.'.join(parts[:i]) or 'top'}': "
                              f"{', '.join(valid)}")
        schema = schema[part]
    if isinstance(schema, dict):
        raise MatrixError(f"{source}: {where}: '{dotted}' is a section; set its fields, e.g. "
                          f"{dotted}.{next(iter(schema))}")
    return dotted


def _set_path(spec: dict, dotted: str, value, source: str, where: str) -> None:
    """spec[a][b] = value for 'a.b', checking that the path exists in the run spec schema."""
    config.set_path(spec, _check_path(dotted, source, where), copy.deepcopy(value))


def _matches(cell: dict, pattern: dict) -> bool:
    return all(cell.get(k) == v for k, v in pattern.items())


MAX_CELLS = 10**6


def cell_count(doc: dict) -> tuple[int, str]:
    """How many cells the matrix has before exclude and deduplication, counted from its axes without
    expanding them, and how: (count, '3 backbone x 2 head + 1 include')."""
    matrix = doc.get("matrix") or {}
    sizes = [(len(values) if isinstance(values, list) else 0, key) for key, values in matrix.items()]
    include = doc.get("include") or []
    count = math.prod(n for n, _ in sizes) if sizes else 0
    count += len(include) if isinstance(include, list) else 0
    formula = " x ".join(f"{n} {key.split('.')[-1]}" for n, key in sizes) or "no axes"
    return count, formula + (f" + {len(include)} include" if isinstance(include, list) and include else "")


def _cells(doc: dict, source: str, max_cells: int = MAX_CELLS) -> list[dict]:
    matrix = doc.get("matrix") or {}
    if not isinstance(matrix, dict):
        raise MatrixError(f"{source}: 'matrix' must map spec paths to lists of values")
    for key, values in matrix.items():
        if not isinstance(values, list) or not values:
            raise MatrixError(f"{source}: matrix.{key} must be a non-empty list, got {values!r}")
    keys = list(matrix)
    count, formula = cell_count(doc)
    if count > max_cells:
        raise MatrixError(f"{source}: the matrix has {count:,} cells ({formula}), more than the limit of "
                          f"{max_cells:,}; nothing was expanded. Narrow an axis, or raise the limit with "
                          f"--max-cells {count} if you mean it")
    cells = [dict(zip(keys, combo)) for combo in itertools.product(*matrix.values())]
    for i, pattern in enumerate(doc.get("exclude") or []):
        if not isinstance(pattern, dict):
            raise MatrixError(f"{source}: exclude[{i}] must be a mapping of axis values")
        for key in pattern:
            if key not in matrix:  # a typo here would silently exclude nothing
                raise MatrixError(f"{source}: exclude[{i}]: '{key}' is not a matrix axis"
                                  f"{config.did_you_mean(str(key), keys)}; "
                                  f"axes: {', '.join(keys)}")
        cells = [c for c in cells if not _matches(c, pattern)]
    for i, extra in enumerate(doc.get("include") or []):
        if not isinstance(extra, dict):
            raise MatrixError(f"{source}: include[{i}] must be a mapping of axis values")
        cells.append(dict(extra))
    return cells


def load_profile(name: str) -> tuple[dict, Path]:
    """A cluster profile: slurm/profiles/NAME.yaml, or a YAML file path, holding executor keys
    (checked with the file's executor section, against its backend)."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILES / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in PROFILES.glob("*.yaml"))
            raise MatrixError(f"--profile {name}: no {path}; profiles there: {', '.join(known) or '(none)'}; "
                              f"or give a path to a YAML file of executor keys")
    given = read_yaml(path, "profile", MatrixError) or {}
    if not isinstance(given, dict):
        raise MatrixError(f"{path}: a profile must be a mapping of executor keys, e.g. {{partition: gpu}}")
    return given, path


def _executor(doc: dict, source: str, profile: str | None = None) -> dict:
    """The backends' defaults < the profile < the file's executor section (with its --set overrides)."""
    from . import backends

    given = doc.get("executor") or {}
    if not isinstance(given, dict):
        raise MatrixError(f"{source}: 'executor' must be a mapping")
    try:
        return backends.executor(given, source, load_profile(profile) if profile else None)
    except backends.SettingError as err:
        raise MatrixError(str(err)) from None


def parse_overrides(items: list[str]) -> list[tuple[str, object]]:
    """--set key.path=value -> [(path, YAML-parsed value)], e.g. executor.jobs=2, base.train.iterations=100."""
    return config.parse_assignments(items, error=MatrixError)


def _apply_overrides(doc: dict, overrides, source: str) -> None:
    for key, value in overrides:
        top, _, rest = key.partition(".")
        if top not in ("executor", "base") or not rest:
            raise MatrixError(f"{source}: --set {key}: only executor.<key> and base.<spec path> can be set")
        if top == "executor":
            doc["executor"] = doc.get("executor") or {}
            doc["executor"][rest] = value
        else:
            base = doc.setdefault("base", {}) or {}
            doc["base"] = base
            _set_path(base, rest, value, source, f"--set {key}")


def expand_doc(doc, source: str, overrides=(), profile: str | None = None,
               select: Callable[[RunSpec], bool] | None = None, spec_version: int | None = None,
               smoke_results: Path | None = None, max_cells: int = MAX_CELLS) -> Sweep:
    """A parsed experiment document -> Sweep; raises MatrixError naming `source`.

    Only the cells that `select` keeps are in `Sweep.runs` (the others are counted).
    `spec_version`: the version the sweep was first planned at; the defaults changed
    since then keep their old values in it (config.HISTORY), with a notice.
    `smoke_results`: plan the smoke version of every cell (harness/smoke.py), data under that folder.
    A matrix of more than `max_cells` cells (counted from its axes) is refused before it is expanded."""
    doc = _checked_doc(doc, source, overrides)
    name = sweep_name(doc, source)
    if smoke_results is not None:
        name = smoke.sweep_name(name)
    base = _pin_old_defaults(config.rename_keys(doc.get("base") or {}, source), spec_version, source)
    try:
        resolved_base = config.resolve(base, source=f"{source}: base")
    except config.SpecError as err:
        raise MatrixError(str(err)) from None
    executor = _executor(doc, source, profile)
    hasher = Hasher(resolved_base)
    deltas = _Deltas(doc.get("presets") or {}, source, hasher.base, smoke_results)
    runs: dict[str, RunSpec] = {}
    seen: set[str] = set()
    for cell in _cells(doc, source, max_cells):
        delta = deltas.of(cell)
        cell = _collapse(cell, delta, hasher, deltas.path)
        rid = hasher.run_id(delta)
        if rid in seen:
            continue
        seen.add(rid)
        run = RunSpec(rid, resolved_base, cell, delta, hasher.base)
        if select is None or select(run):
            runs[rid] = run
    axes = list((doc.get("matrix") or {}).keys())
    for extra in doc.get("include") or []:
        axes += [k for k in extra if k not in axes]
    count, formula = cell_count(doc)
    return Sweep(name, source, list(runs.values()), executor, axes, doc.get("description", ""), len(seen),
                 f"{count:,} = {formula}")


def _checked_doc(doc, source: str, overrides) -> dict:
    """A copy of the document with its top-level keys and presets checked and the overrides applied."""
    if not isinstance(doc, dict):
        raise MatrixError(f"{source}: an experiment file must be a mapping with keys {', '.join(TOP_KEYS)}")
    doc = copy.deepcopy(doc)
    for key in doc:
        if key not in TOP_KEYS:
            raise MatrixError(f"{source}: unknown top-level key '{key}'{config.did_you_mean(str(key), TOP_KEYS)}; "
                              f"valid: {', '.join(TOP_KEYS)}")
    _apply_overrides(doc, overrides, source)
    presets = doc.get("presets") or {}
    if not isinstance(presets, dict):
        raise MatrixError(f"{source}: 'presets' must map preset names to mappings of spec paths")
    for preset, values in presets.items():
        if not isinstance(values, dict):
            raise MatrixError(f"{source}: presets.{preset} must be a mapping of spec paths to values, "
                              f"e.g. {{model.backbone: resnet50, train.lr: 0.01}}; got {values!r}")
    return doc


class _Deltas:
    """Each cell as its delta from the base ({path: value}): keys and presets resolved, values checked,
    smoke settings applied, fields that relate checked. Memoised, so 10^5 cells plan in seconds."""

    def __init__(self, presets: dict, source: str, flat_base: dict, smoke_results: Path | None):
        self.presets, self.source, self.flat_base, self.smoke_results = presets, source, flat_base, smoke_results
        self._valid: dict[tuple, tuple[str, object]] = {}  # (key, repr(value)) -> (path, checked value)
        self._paths: dict[str, str] = {}
        self._cross_checked: set[str] = set()

    def path(self, key: str) -> str:
        """The spec path a cell's key names (renamed keys under their new name)."""
        if key not in self._paths:
            self._paths[key] = _check_path(key, self.source, "matrix")
        return self._paths[key]

    def _checked(self, key: str, value, origin: str) -> tuple[str, object]:
        memo = (key, repr(value))
        if memo not in self._valid:
            path = _check_path(key, self.source, origin)
            self._paths[key] = path
            self._valid[memo] = path, config.check_value(path, value, f"{self.source}: {origin}")
        return self._valid[memo]

    def of(self, cell: dict) -> dict:
        delta: dict = {}
        try:
            for key, value in cell.items():
                if key != "preset":
                    path, value = self._checked(key, value, _where(cell))
                    delta[path] = value
                    continue
                if value not in self.presets:
                    raise MatrixError(f"{self.source}: {_where(cell)}: unknown preset {value!r}"
                                      f"{config.did_you_mean(str(value), self.presets)}; "
                                      f"valid: {', '.join(self.presets) or '(none defined under presets:)'}")
                for preset_key, preset_value in self.presets[value].items():
                    path, preset_value = self._checked(preset_key, preset_value, f"presets.{value}")
                    delta[path] = preset_value
            fields = collections.ChainMap(delta, self.flat_base)
            if self.smoke_results is not None:
                for path, value in smoke.settings(fields, self.smoke_results).items():
                    delta[path] = config.check_value(path, value, f"{self.source}: --smoke")
            memo = repr([fields[path] for path in config.CROSS_FIELDS])
            if memo not in self._cross_checked:
                config.check_spec(fields, f"{self.source}: {_where(cell)}")
                self._cross_checked.add(memo)
        except config.SpecError as err:
            raise MatrixError(str(err)) from None
        return delta


def _collapse(cell: dict, delta: dict, hasher: Hasher, path_of: Callable[[str], str]) -> dict:
    """The fields the cell's other choices make irrelevant (config.unused_fields: a parametric head's
    prototype section, the other decoders' options) go back to their baseline in `delta`, so cells that
    differ only there are one run; returns the cell's settings without them."""
    unused = config.unused_fields(collections.ChainMap(delta, hasher.base))
    if not unused:
        return cell
    for path in unused:
        if delta.get(path, hasher.base[path]) != hasher.baseline[path]:
            delta[path] = hasher.baseline[path]
    unused = set(unused)
    return {k: v for k, v in cell.items() if k == "preset" or path_of(k) not in unused}


def sweep_name(doc: dict, source: str) -> str:
    """The experiment's `sweep:` key, else its file's stem; a folder directly under --results."""
    name = doc.get("sweep") or Path(source).stem
    try:
        return check_sweep_name(name, f"{source}: sweep name")
    except StoreError as err:
        raise MatrixError(str(err)) from None


def sweep_name_of(target: str | None) -> str | None:
    """The sweep a command line names: an experiment file's (its `sweep:` key, else its stem), or the name
    itself; None (every sweep) stays None."""
    path = Path(target or "")
    if path.suffix in (".yaml", ".yml"):
        doc = read_yaml(path, "experiment file", MatrixError)
        return sweep_name(doc if isinstance(doc, dict) else {}, str(path))
    return target


def _where(cell: dict) -> str:
    return "cell " + ", ".join(f"{k}={v}" for k, v in cell.items())


def _pin_old_defaults(base: dict, spec_version: int | None, source: str) -> dict:
    """A sweep planned at an older spec version keeps the defaults it was planned with."""
    if spec_version is None:
        return base
    for path, old in config.changed_defaults(spec_version).items():
        if config.get(base, path, None) is None:
            _set_path(base, path, old, source, "base")
            config.notice(f"{source}: this sweep was planned at spec version {spec_version}: '{path}' keeps "
                          f"its old default {old!r} (now {config.get(config.DEFAULTS, path)!r}); "
                          f"set it in the file to change it")
    return base


def check_inputs(sweep: Sweep, dry_run: bool = False) -> list[str]:
    """Every selected cell's dataset folder and weight file (model.pretrained) exist, each checked once,
    before anything is queued. In a dry run a path that names an unset environment variable (data or
    weights that live on another machine) is a warning, returned."""
    checked, warnings = set(), []
    for run in sweep.runs:
        where = f"{sweep.source}: cell {settings_text(run.settings) or run.run_id}"
        dataset, root, weights = run.value("data.dataset"), run.value("data.root"), run.value("model.pretrained")
        if dataset in NEEDS_ROOT and ("data.root", root) not in checked:
            checked.add(("data.root", root))
            try:
                folder = expand_env(root)
            except FileNotFoundError as err:
                if not dry_run:
                    raise MatrixError(f"{where}: {err}") from None
                warnings.append(f"{where}: {err}")
            else:
                if not Path(folder).is_dir():
                    shown = repr(root) if folder == root else f"{root!r} = {folder!r}"
                    raise MatrixError(f"{where}: data.root {shown} is not a folder (seen from {Path.cwd()}); "
                                      f"data.dataset {dataset!r} needs the folder that holds it")
        if weights and ("model.pretrained", weights) not in checked:
            checked.add(("model.pretrained", weights))
            from protoseg.models.backbones import weight_file

            try:
                weight_file(weights)
            except FileNotFoundError as err:
                unset = "is not set" in str(err)
                if dry_run and unset:
                    warnings.append(f"{where}: {err}")
                    continue
                raise MatrixError(f"{where}: {err}" + ("" if unset else f" (seen from {Path.cwd()})")) from None
    return warnings


def load(path: str | Path, overrides=(), profile: str | None = None, select=None,
         spec_version: int | None = None, smoke_results: Path | None = None, max_cells: int = MAX_CELLS) -> Sweep:
    return expand_doc(read_yaml(path, "experiment file", MatrixError), str(path), overrides, profile, select,
                      spec_version, smoke_results, max_cells)
