"""The backend registry: every module named in backends.NAMES implements the
whole `Backend` interface, its settings are consistent, and a key of another
backend is refused naming both. Runs without a cluster, Ray or a GPU."""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from conftest import ROOT
from harness import backends, matrix
from harness.matrix import RunSpec
from harness.store import Store, owner

pytestmark = pytest.mark.usefixtures("fake_srun")

METHODS = [name for name, value in vars(backends.Backend).items() if inspect.isfunction(value)
           and not name.startswith("_")]
ATTRIBUTES = list(backends.Backend.__annotations__)


def other_key(name: str) -> tuple[str, str] | None:
    """(another backend, one of its keys), or None when no other backend has settings."""
    return next(((other, next(iter(backends.get(other).SETTINGS)))
                 for other in backends.NAMES if other != name and backends.get(other).SETTINGS), None)




def test_the_interface_is_what_the_registry_test_checks():
    assert set(METHODS) == {"submit", "wait", "alive", "cancel", "describe", "resources"}
    assert set(ATTRIBUTES) == {"SETTINGS", "DETACHED"}


@pytest.mark.parametrize("name", backends.NAMES)
def test_every_backend_implements_the_whole_interface(name):
    module = backends.get(name)
    assert isinstance(module, backends.Backend)
    for method in METHODS:
        function = getattr(module, method, None)
        assert callable(function), f"{name}.{method} is missing"
        wanted = list(inspect.signature(getattr(backends.Backend, method)).parameters)[1:]  # without self
        given = list(inspect.signature(function).parameters)
        assert given[:len(wanted)] == wanted, f"{name}.{method}{inspect.signature(function)}: wanted {wanted}"
    assert isinstance(module.DETACHED, bool)


@pytest.mark.parametrize("name", backends.NAMES)
def test_settings_are_own_keys_whose_defaults_pass_their_checks(name, tmp_path):
    settings = backends.get(name).SETTINGS
    assert not set(settings) & set(backends.COMMON), "a common key is declared again"
    for key, setting in settings.items():
        assert isinstance(setting, backends.Setting) and setting.valid, key
        assert setting.check(setting.default), f"{name}: the default of {key} fails its own check"
    ex = backends.executor({"backend": name}, str(tmp_path / "x.yaml"))
    assert set(ex) == {*backends.COMMON, *settings} and ex["backend"] == name


@pytest.mark.parametrize("name", backends.NAMES)
def test_describe_returns_text_resources_a_count_and_a_limit_and_an_empty_batch_asks_nothing(name, tmp_path):
    module = backends.get(name)
    store = Store(tmp_path / "results", "s")
    runs = [RunSpec("a" * 12, {}, {}), RunSpec("b" * 12, {}, {})]
    executor = backends.executor({"backend": name}, "x.yaml")
    text = module.describe(store, runs, executor)
    assert isinstance(text, str) and text.strip()
    processes, limit = module.resources(executor)
    assert isinstance(processes, int) and processes >= 1 and (limit is None or limit > 0)
    assert module.alive([]) == []
    assert module.cancel([], pending_only=True) == [] and module.cancel([], pending_only=False) == []


@pytest.mark.parametrize("name", backends.NAMES)
def test_a_key_of_another_backend_is_refused_naming_both(name, tmp_path):
    found = other_key(name)
    if found is None:
        pytest.skip("no other backend has settings")
    other, key = found
    source = str(tmp_path / "x.yaml")
    with pytest.raises(matrix.MatrixError) as err:
        matrix.expand_doc({"sweep": "x", "executor": {"backend": name, key: backends.get(other).SETTINGS[key].default}},
                          source)
    text = str(err.value)
    assert text.startswith(f"{source}: executor.{key} is a setting of the {other} backend, not of {name}")
    assert f"valid for {name}: " + ", ".join([*backends.COMMON, *backends.get(name).SETTINGS]) in text
    profile = tmp_path / "mine.yaml"  # the same rule in a profile, which is named
    profile.write_text(f"{key}: {backends.get(other).SETTINGS[key].default!r}\n".replace("None", "null"))
    with pytest.raises(matrix.MatrixError, match=rf"^{profile}: {key} is a setting of the {other} backend, "
                                                 rf"not of {name}"):
        matrix.expand_doc({"sweep": "x", "executor": {"backend": name}}, source, profile=str(profile))


def test_precedence_defaults_profile_file(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("backend: slurm\npartition: gpu\ntimeout_min: 60\n")
    ex = matrix.expand_doc({"sweep": "x", "executor": {"timeout_min": 30}}, "x.yaml", [("executor.qos", "high")],
                           profile=str(profile)).executor
    assert (ex["backend"], ex["partition"], ex["timeout_min"], ex["qos"], ex["max_timeouts"]) == \
        ("slurm", "gpu", 30, "high", 3)


def test_an_unknown_key_suggests_and_lists_the_backends_keys(tmp_path):
    with pytest.raises(matrix.MatrixError, match=r"x.yaml: unknown key 'executor.partiton' \(did you mean "
                                                 r"'partition'\?\); valid for slurm: backend, jobs, stale_after, "):
        matrix.expand_doc({"sweep": "x", "executor": {"backend": "slurm", "partiton": "gpu"}}, "x.yaml")
    with pytest.raises(matrix.MatrixError, match=r"executor.backend is 'rey' \(did you mean 'ray'\?\)"):
        matrix.expand_doc({"sweep": "x", "executor": {"backend": "rey"}}, "x.yaml")


def test_a_claim_is_judged_by_its_liveness_and_rows_ask_it_once(tmp_path):
    asked = []

    def liveness(claims):  # the SLURM claims' jobs: 7_1 has ended; the others cannot tell
        asked.append(len(claims))
        return [claim["job_id"] != "7_1" if claim.get("backend") == "slurm" else None for claim in claims]

    store = Store(tmp_path / "results", "s", liveness)
    for i in range(3):
        rid = f"r{i}"
        store.prepare(rid, {"model": {}}, {})
        store.claim(rid, {**owner(backend="slurm", job_id=f"7_{i}"), "pid": None})
        store.update(rid, state="queued", backend="slurm", job_id=f"7_{i}")
    store.prepare("mine", {"model": {}}, {})
    store.claim("mine", owner(backend="local"))
    store.update("mine", state="running", backend="local")
    store.prepare("other", {"model": {}}, {})
    store.claim("other", owner(backend="not-a-backend"))  # unknown: pid and heartbeat decide
    store.update("other", state="running")
    states = {row["run_id"]: row["state"] for row in store.rows()}
    assert states == {"r0": "queued", "r1": "crashed", "r2": "queued", "mine": "running", "other": "running"}
    assert asked == [5]  # one batch for the five claims
    assert store.state("r1") == "crashed" and asked == [5, 1]


def test_liveness_asks_each_backend_once_for_all_of_its_claims(monkeypatch):
    asked = []
    monkeypatch.setattr(backends.get("slurm"), "alive", lambda claims: asked.append(len(claims)) or [
        claim["job_id"] != "7_1" for claim in claims])
    claims = [{"backend": "slurm", "job_id": f"7_{i}"} for i in range(3)]
    claims += [{"backend": "local"}, {"backend": "not-a-backend"}]
    assert backends.alive(claims) == [True, False, True, None, None]
    assert asked == [3]  # one batch for the three SLURM claims


def test_the_registry_imports_no_heavy_library():
    """`harness status` asks the backends about claims: no torch, ray or submitit import for that."""
    code = ("import sys, harness.cli, harness.backends as b; [b.get(n) for n in b.NAMES]; "
            "print(sorted({'torch', 'ray', 'submitit'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
