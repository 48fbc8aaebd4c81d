"""Executors behind one small interface (as submitit's). A backend is one module
of this package, named in NAMES, that defines what `Backend` lists; it only
executes, the store keeps the state.

The modules are imported lazily (`get`): `harness status` asks a backend about
its claims without importing torch, submitit or ray."""
from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable

from protoseg import config

from ..store import STALE_AFTER, each_run

NAMES = ("local", "slurm", "ray")


class BackendUnavailable(RuntimeError):
    """The backend's cluster cannot be reached; nothing was started (or, for cancel, stopped)."""


class SettingError(ValueError):
    """An invalid executor setting (matrix turns it into a MatrixError)."""


class Setting(NamedTuple):
    default: Any
    check: Callable[[Any], bool]  # True for a valid value
    valid: str                    # what is valid, for the error message
    about: str = ""
    flag: dict | None = None      # argparse keywords of its `harness run --KEY` flag ('_' as '-'), if it has one


@runtime_checkable
class Backend(Protocol):
    """What a backend module defines (module-level names)."""

    SETTINGS: dict[str, Setting]  # its own executor keys (besides COMMON)
    DETACHED: bool                # its runs go on when the driver stops (SLURM jobs)

    def submit(self, store, runs: list, executor: dict) -> Any:
        """Claim and start (or queue) the runs; returns a handle for wait(). A DETACHED backend's also takes
        `follow`: runs its jobs hold for an earlier driver, which wait() then follows with the new ones."""

    def wait(self, handle, progress: bool = True) -> dict[str, str]:
        """Follow the runs to their end: {run id: final state}."""

    def alive(self, claims: list[dict]) -> list[bool | None]:
        """Is each claim's run still held by this backend, asked in one batch; None: cannot tell
        (the store then judges by heartbeat and pid)."""

    def cancel(self, claims: list[dict], pending_only: bool) -> list[str | None]:
        """Stop the claims' runs beyond the cancel file: `pending_only` those that have not started
        (at once), else all (after the grace). Per claim what was done, e.g. "SLURM job 7 scancelled",
        or None. Raises BackendUnavailable when the cluster does not answer."""

    def describe(self, store, runs: list, executor: dict) -> str:
        """What `harness run --dry-run` shows about how the runs would be executed."""

    def resources(self, executor: dict) -> tuple[int, float | None]:
        """What one run gets under `executor`: (processes, time limit in minutes or None for none)."""


def get(name: str) -> Backend:
    """The backend module `name`, imported on first use."""
    if name not in NAMES:
        raise ValueError(f"backend {name!r} is not valid; valid: {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")


def _each_backend(claims: list[dict], ask: Callable[[Backend, list[dict]], list]) -> list:
    """ask(backend, its claims) once per backend named in the claims; None for a claim of no known backend."""
    answers: list = [None] * len(claims)
    groups: dict[str, list[int]] = {}
    for i, claim in enumerate(claims):
        if (claim or {}).get("backend") in NAMES:
            groups.setdefault(claim["backend"], []).append(i)
    for name, where in groups.items():
        for i, answer in zip(where, ask(get(name), [claims[i] for i in where])):
            answers[i] = answer
    return answers


def alive(claims: list[dict]) -> list[bool | None]:
    """Each claim's liveness, asking each backend once for all of its claims."""
    return _each_backend(claims, lambda backend, group: backend.alive(group))


def cancel(claims: list[dict], pending_only: bool) -> list[str | None]:
    """Each backend's cancel of its claims (one call per backend)."""
    return _each_backend(claims, lambda backend, group: backend.cancel(group, pending_only))


# ---- executor settings ---------------------------------------------------
def number(minimum: float = 0.0, strict: bool = True) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and (v > minimum if strict
                                                                                 else v >= minimum)


def integer(minimum: int = 0) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def text(v) -> bool:
    return v is None or (isinstance(v, str) and v.strip() != "")


COMMON = {
    "backend": Setting("local", lambda v: v in NAMES, ", ".join(NAMES), flag={"choices": NAMES}),
    "jobs": Setting(None, optional(integer(1)), "null or a positive integer",
                    "runs at once: local workers (None = fits the cores), Ray trials, SLURM array %N",
                    flag={"type": int, "help": "runs at once (local workers, Ray concurrent trials)"}),
    "stale_after": Setting(STALE_AFTER, number(), "a positive number of seconds",
                           "seconds without a heartbeat before a running run counts as crashed"),
}


def flags() -> dict[str, dict]:
    """{executor key: argparse keywords} of the settings `harness run` takes as flags, COMMON's first."""
    every = [COMMON, *(get(name).SETTINGS for name in NAMES)]
    return {key: setting.flag for settings in every for key, setting in settings.items() if setting.flag}


def executor(given: dict, source: str, profile: tuple[dict, Path] | None = None) -> dict:
    """The checked executor of a sweep: COMMON and the chosen backend's defaults < the profile
    (its keys, path) < `given` (the file's executor section with its --set overrides)."""
    layers = [(given, source, "executor.", "")]  # (keys, where they are, prefix, origin in value errors)
    if profile:
        layers.insert(0, (profile[0], str(profile[1]), "", f" (from profile {profile[1]})"))
    merged, where = {}, {}
    for values, _, _, origin in layers:
        for key, value in values.items():
            merged[key], where[key] = value, origin
    name = merged.get("backend", COMMON["backend"].default)
    if name not in NAMES:
        raise SettingError(f"{source}: executor.backend is {name!r}{where.get('backend', '')}"
                           f"{config.did_you_mean(str(name), NAMES)}; valid: {', '.join(NAMES)}")
    own = {**COMMON, **get(name).SETTINGS}
    for values, src, prefix, _ in layers:
        for key in values:
            if key in own:
                continue
            other = next((n for n in NAMES if n != name and key in get(n).SETTINGS), None)
            if other:
                raise SettingError(f"{src}: {prefix}{key} is a setting of the {other} backend, not of {name} "
                                   f"(executor.backend); valid for {name}: {', '.join(own)}")
            anywhere = [k for n in NAMES for k in get(n).SETTINGS]
            close = config.did_you_mean(str(key), own) or config.did_you_mean(str(key), anywhere)
            raise SettingError(f"{src}: unknown key '{prefix}{key}'{close}; valid for {name}: {', '.join(own)}")
    out = {key: copy.deepcopy(setting.default) for key, setting in own.items()}
    out.update(merged)
    for key, setting in own.items():
        if not setting.check(out[key]):
            raise SettingError(f"{source}: executor.{key} is {out[key]!r}{where.get(key, '')}; valid: {setting.valid}")
    return out


# ---- shared by the backends ------------------------------------------------
def claim_all(store, runs, who: dict, stale_after: float) -> tuple[list, dict[str, str]]:
    """Claim each run for `who`: (the runs claimed, {run id: why not} for the others)."""
    claimed, others = [], {}
    for spec, took in zip(runs, each_run(lambda spec: store.claim(spec.run_id, who, stale_after), runs)):
        if took:
            claimed.append(spec)
        else:
            others[spec.run_id] = "done elsewhere" if store.is_done(spec.run_id) else "running elsewhere"
    return claimed, others

