"""Experiment YAML -> fully resolved run specs with stable run ids.

    sweep: quickstart                 # results/<sweep>/
    base: {model: {...}, data: {...}} # a partial run spec
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

import copy
import difflib
import hashlib
import itertools
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


from protoseg import config
from protoseg.io import read_yaml

TOP_KEYS = ("sweep", "description", "base", "presets", "matrix", "include", "exclude", "executor")
# Resource and display fields: they do not change the experiment, so not its id.
NOT_HASHED = ("train.threads", "train.progress", "train.device", "data.num_workers")
# Fields that mean nothing to a parametric head: reset, so its cells collapse into one.
PROTOTYPE_ONLY = ("embed_dim", "num_prototypes", "gamma", "update_prototypes", "update_assignment",
                  "sinkhorn_epsilon", "sinkhorn_iterations", "proj_norm", "mask_norm", "ppc_weight",
                  "ppd_weight", "ppc_temperature")

EXECUTOR_DEFAULTS = {
    "backend": "local",          # local | slurm | ray
    "jobs": None,                # runs at once: local workers (None = fits the cores), Ray trials, SLURM array %N
    "stale_after": 120,          # seconds without a heartbeat before a running run counts as crashed
    # ray
    "address": None,             # None = a local Ray started and stopped by the harness; "auto" or ray://...
    "cpus_per_trial": 1,
    "gpus_per_trial": 0,
    "max_failures": 2,           # Tune retries of a trial that died (it resumes from its checkpoint)
    # slurm (submitit); a cluster's values belong in a profile: slurm/profiles/NAME.yaml, --profile NAME
    "partition": None,
    "account": None,
    "qos": None,
    "timeout_min": 1440,         # time limit per job; at its end the run checkpoints and is requeued
    "cpus_per_task": None,       # None = the cluster's default; torch uses this many threads
    "gpus_per_task": 0,
    "tasks_per_node": 1,         # > 1: one DDP process per task (and per GPU)
    "mem_gb": None,
    "constraint": None,
    "setup": [],                 # shell lines run before the job (module load ..., source venv)
    "sbatch": {},                # any other sbatch flag, e.g. {exclude: node12, mail-type: END}
    "max_timeouts": 3,           # requeues after a time-out before the run is marked failed
    "signal_delay_s": 120,       # USR2 this long before the limit: must cover an iteration + an eval + a checkpoint
    "wait": True,                # wait for the jobs with a progress bar; false: submit and return
}
BACKENDS = ("local", "slurm", "ray")
PROFILES = Path(__file__).resolve().parent.parent / "slurm" / "profiles"


class MatrixError(ValueError):
    """An invalid experiment file; nothing has been started."""


@dataclass
class RunSpec:
    run_id: str
    spec: dict                      # fully resolved run spec (protoseg.config)
    settings: dict = field(default_factory=dict)  # the matrix axes' values of this cell


@dataclass
class Sweep:
    name: str
    source: str
    runs: list[RunSpec]
    executor: dict
    axes: list[str]
    description: str = ""


def settings_text(settings: dict) -> str:
    """A cell's axis values as 'head=parametric seed=0' (last part of each spec path)."""
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in settings.items())


def _close(word: str, valid) -> str:
    match = difflib.get_close_matches(word, list(valid), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _set_path(spec: dict, dotted: str, value, source: str, where: str) -> None:
    """spec[a][b] = value for 'a.b', checking that the path exists in the run spec schema."""
    node, schema = spec, config.DEFAULTS
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(schema, dict) or part not in schema:
            valid = list(schema) if isinstance(schema, dict) else []
            raise MatrixError(f"{source}: {where}: unknown spec path '{dotted}'"
                              f"{_close(part, valid)}; valid at '{'.'.join(parts[:i]) or 'top'}': "
                              f"{', '.join(valid)}")
        schema = schema[part]
        if i == len(parts) - 1:
            node[part] = copy.deepcopy(value)
        else:
            node = node.setdefault(part, {})


def run_id(spec: dict) -> str:
    """Short hash of the canonical resolved spec, resource fields left out."""
    canonical = copy.deepcopy(spec)
    for dotted in NOT_HASHED:
        section, key = dotted.split(".")
        canonical[section].pop(key, None)
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _canonical(spec: dict) -> dict:
    if spec["model"]["head"] == "parametric":
        for key in PROTOTYPE_ONLY:
            spec["model"][key] = copy.deepcopy(config.DEFAULTS["model"][key])
    return spec


def _matches(cell: dict, pattern: dict) -> bool:
    return all(cell.get(k) == v for k, v in pattern.items())


def _cells(doc: dict, source: str) -> list[dict]:
    matrix = doc.get("matrix") or {}
    if not isinstance(matrix, dict):
        raise MatrixError(f"{source}: 'matrix' must map spec paths to lists of values")
    for key, values in matrix.items():
        if not isinstance(values, list) or not values:
            raise MatrixError(f"{source}: matrix.{key} must be a non-empty list, got {values!r}")
    keys = list(matrix)
    cells = [dict(zip(keys, combo)) for combo in itertools.product(*matrix.values())]
    for i, pattern in enumerate(doc.get("exclude") or []):
        if not isinstance(pattern, dict):
            raise MatrixError(f"{source}: exclude[{i}] must be a mapping of axis values")
        for key in pattern:
            if key not in matrix:  # a typo here would silently exclude nothing
                raise MatrixError(f"{source}: exclude[{i}]: '{key}' is not a matrix axis{_close(str(key), keys)}; "
                                  f"axes: {', '.join(keys)}")
        cells = [c for c in cells if not _matches(c, pattern)]
    for i, extra in enumerate(doc.get("include") or []):
        if not isinstance(extra, dict):
            raise MatrixError(f"{source}: include[{i}] must be a mapping of axis values")
        cells.append(dict(extra))
    return cells


def _unknown_executor_keys(given: dict, source: str, prefix: str = "") -> None:
    for key in given:
        if key not in EXECUTOR_DEFAULTS:
            raise MatrixError(f"{source}: unknown key '{prefix}{key}'{_close(str(key), EXECUTOR_DEFAULTS)}; "
                              f"valid: {', '.join(EXECUTOR_DEFAULTS)}")


def load_profile(name: str) -> tuple[dict, Path]:
    """A cluster profile: slurm/profiles/NAME.yaml, or a YAML file path, holding executor keys."""
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
    _unknown_executor_keys(given, str(path))
    return given, path


def _executor(doc: dict, source: str, profile: str | None = None) -> dict:
    """Defaults < the profile < the file's executor section (with its --set overrides)."""
    given = doc.get("executor") or {}
    if not isinstance(given, dict):
        raise MatrixError(f"{source}: 'executor' must be a mapping")
    _unknown_executor_keys(given, source, "executor.")
    out, origin = dict(EXECUTOR_DEFAULTS), {}
    if profile:
        values, path = load_profile(profile)
        out.update(values)
        origin = {key: f"profile {path}" for key in values}
    for key, value in given.items():
        out[key] = value
        origin.pop(key, None)
    def number(v, minimum=0.0, strict=True):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and (v > minimum if strict else v >= minimum)

    def integer(v, minimum=0):
        return isinstance(v, int) and not isinstance(v, bool) and v >= minimum

    def text(v):
        return v is None or (isinstance(v, str) and v.strip() != "")

    for key, ok, valid in (("jobs", lambda v: v is None or integer(v, 1), "null or a positive integer"),
                           ("stale_after", number, "a positive number of seconds"),
                           ("address", lambda v: v is None or isinstance(v, str), "null, 'auto' or ray://host:port"),
                           ("cpus_per_trial", number, "a positive number"),
                           ("gpus_per_trial", lambda v: number(v, strict=False), "a number >= 0"),
                           ("max_failures", integer, "an integer >= 0"),
                           *((k, text, "null or a non-empty string") for k in ("partition", "account", "qos", "constraint")),
                           ("timeout_min", lambda v: integer(v, 1), "a positive whole number of minutes"),
                           ("cpus_per_task", lambda v: v is None or integer(v, 1), "null or a positive integer"),
                           ("gpus_per_task", integer, "an integer >= 0"),
                           ("tasks_per_node", lambda v: integer(v, 1), "a positive integer"),
                           ("mem_gb", lambda v: v is None or number(v), "null or a positive number of GB"),
                           ("setup", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                            "a list of shell lines"),
                           ("sbatch", lambda v: isinstance(v, dict), "a mapping of sbatch flag to value"),
                           ("max_timeouts", integer, "an integer >= 0"),
                           ("signal_delay_s", lambda v: integer(v, 1), "a positive whole number of seconds"),
                           ("wait", lambda v: isinstance(v, bool), "true or false")):
        if not ok(out[key]):
            where = f" (from {origin[key]})" if key in origin else ""
            raise MatrixError(f"{source}: executor.{key} is {out[key]!r}{where}; valid: {valid}")
    if out["backend"] not in BACKENDS:
        raise MatrixError(f"{source}: executor.backend is {out['backend']!r}{_close(str(out['backend']), BACKENDS)}"
                          f"; valid: {', '.join(BACKENDS)}")
    return out


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


def expand_doc(doc, source: str, overrides=(), profile: str | None = None) -> Sweep:
    """A parsed experiment document -> Sweep; raises MatrixError naming `source`."""
    if not isinstance(doc, dict):
        raise MatrixError(f"{source}: an experiment file must be a mapping with keys {', '.join(TOP_KEYS)}")
    doc = copy.deepcopy(doc)
    for key in doc:
        if key not in TOP_KEYS:
            raise MatrixError(f"{source}: unknown top-level key '{key}'{_close(str(key), TOP_KEYS)}; "
                              f"valid: {', '.join(TOP_KEYS)}")
    _apply_overrides(doc, overrides, source)
    name = doc.get("sweep") or Path(source).stem
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise MatrixError(f"{source}: sweep name {name!r} must be letters, digits, '-' or '_'")
    presets = doc.get("presets") or {}
    if not isinstance(presets, dict):
        raise MatrixError(f"{source}: 'presets' must map preset names to mappings of spec paths")
    for name, values in presets.items():
        if not isinstance(values, dict):
            raise MatrixError(f"{source}: presets.{name} must be a mapping of spec paths to values, "
                              f"e.g. {{model.backbone: resnet50, train.lr: 0.01}}; got {values!r}")
    base = doc.get("base") or {}
    try:
        config.resolve(base, source=f"{source}: base")
    except config.SpecError as err:
        raise MatrixError(str(err)) from None

    runs: dict[str, RunSpec] = {}
    for cell in _cells(doc, source):
        spec = copy.deepcopy(base)
        where = "cell " + ", ".join(f"{k}={v}" for k, v in cell.items())
        for key, value in cell.items():
            if key == "preset":
                if value not in presets:
                    raise MatrixError(f"{source}: {where}: unknown preset {value!r}{_close(str(value), presets)}; "
                                      f"valid: {', '.join(presets) or '(none defined under presets:)'}")
                for path, preset_value in presets[value].items():
                    _set_path(spec, path, preset_value, source, f"presets.{value}")
            else:
                _set_path(spec, key, value, source, where)
        try:
            resolved = _canonical(config.resolve(spec, source=f"{source}: {where}"))
            _check_names(resolved)
        except (config.SpecError, ValueError) as err:
            raise MatrixError(str(err) if isinstance(err, config.SpecError) else f"{source}: {where}: {err}") from None
        if resolved["model"]["head"] == "parametric":  # its prototype settings were reset above
            cell = {k: v for k, v in cell.items() if k.removeprefix("model.") not in PROTOTYPE_ONLY}
        rid = run_id(resolved)
        runs.setdefault(rid, RunSpec(rid, resolved, cell))
    axes = list((doc.get("matrix") or {}).keys())
    for extra in doc.get("include") or []:
        axes += [k for k in extra if k not in axes]
    return Sweep(name, source, list(runs.values()), _executor(doc, source, profile), axes, doc.get("description", ""))


def _check_names(spec: dict) -> None:
    """Backbone and dataset names exist (without building anything)."""
    from protoseg.registry import BACKBONES, DATASETS

    for path, valid in (("model.backbone", BACKBONES), ("data.dataset", DATASETS)):
        value = config.get(spec, path)
        if value not in valid:
            raise ValueError(f"{path} is {value!r}{_close(str(value), valid)}; valid: {', '.join(valid)}")


def load(path: str | Path, overrides=(), profile: str | None = None) -> Sweep:
    return expand_doc(read_yaml(path, "experiment file", MatrixError), str(path), overrides, profile)


def git_commit(folder: Path | None = None) -> str | None:
    """The code's git commit (with '-dirty' when the tree has changes), or None outside git."""
    folder = folder or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")
