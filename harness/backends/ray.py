"""Ray backend: each pending run is one Ray Tune trial of a function trainable
that runs the harness worker. The run store stays the truth: Tune's own
storage lives under the sweep folder, and a new Tune experiment is started on
every invocation (the matrix may have grown; Tune's restore cannot know)."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from ..store import LostClaim, Store, owner, pid_alive, read_json
from . import BackendUnavailable, Setting, claim_all, integer, number
from .local import cores

if TYPE_CHECKING:
    from ..matrix import RunSpec

REPORT_EVERY_S = 5.0
SETTINGS = {
    "address": Setting(None, lambda v: v is None or isinstance(v, str), "null, 'auto' or ray://host:port",
                       "None = a local Ray started and stopped by the harness; 'auto' or ray://...",
                       flag={"help": "ray backend: an existing cluster ('auto' or ray://host:port)"}),
    "cpus_per_trial": Setting(1, number(), "a positive number"),
    "gpus_per_trial": Setting(0, number(strict=False), "a number >= 0"),
    "max_failures": Setting(2, integer(), "an integer >= 0",
                            "Tune retries of a trial that died (it resumes from its checkpoint)"),
}
DETACHED = False  # each trial stops at a checkpoint when it sees its driver gone


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an address nobody listens on, instead of Ray's long retries."""
    if address == "auto":
        return  # ray.init(address="auto") says at once when no local cluster exists
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = parsed.hostname, parsed.port or (10001 if parsed.scheme == "ray" else 6379)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        raise BackendUnavailable(f"no Ray cluster at {address} ({host}:{port}: {err}); start one with "
                             f"`ray start --head` or leave --address out to run a local Ray") from None


def connect(address: str | None, num_cpus: int) -> str:
    """Start a local Ray, or join the cluster at `address`; returns a line saying which."""
    import ray

    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as err:
            if address == "auto":
                raise BackendUnavailable(f"no Ray cluster at {address}: {err}") from None
            # something listens there (_check_reachable), so this client may lack the cluster's token
            raise BackendUnavailable(
                f"cannot join the Ray cluster at {address}: {err}; a cluster with token authentication takes only "
                f"clients with its token (RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN, "
                f"else ~/.ray/auth_token)") from None
        return f"connected to the Ray cluster at {address} ({ray.cluster_resources().get('CPU', 0):.0f} CPUs)"
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return f"started a local Ray with {num_cpus} CPUs"


def _report(metrics: dict, run_dir: Path, progress: dict | None) -> None:
    """tune.report with a checkpoint that points at the engine's checkpoints instead of copying them; Tune
    copies the pointer into its storage before report returns, so its folder goes at once."""
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="protoseg-pointer-") as folder:
        (Path(folder) / "pointer.json").write_text(json.dumps({"run_dir": str(run_dir), "progress": progress}))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def attempt(config: dict) -> None:
    """One try of one run inside a Tune trial: the engine runs in a thread while
    this one reports its progress to Tune. A run that fails inside the engine
    is recorded as failed and not retried (the failure is deterministic); a
    trial that dies is retried by Tune and resumes from the engine's checkpoint."""
    import ray
    from ray import tune

    import torch

    from ..worker import execute, store_of

    run_dir = Path(config["run"]["run_dir"])
    store, rid = store_of(run_dir)
    if not store.is_done(rid):  # which Ray node runs this try (the hostname cannot tell nodes of one host apart)
        with contextlib.suppress(LostClaim):  # execute() says so and stops
            store.update(rid, config.get("token"), ray_node=ray.get_runtime_context().get_node_id())
    torch.set_num_threads(int(config.get("threads") or 1))
    outcome: dict = {}
    trial = tune.get_context().get_trial_id()
    stop = threading.Event()
    worker = threading.Thread(target=lambda: outcome.update(
        code=execute(run_dir, backend="ray", job_id=trial, stop=stop, token=config.get("token"))), daemon=True)
    worker.start()
    last = None
    driver = config.get("driver") or {}
    while worker.is_alive():
        worker.join(REPORT_EVERY_S)
        if driver.get("host") == socket.gethostname() and not pid_alive(driver["pid"]):
            # The harness that started this local Ray was killed; Ray may leave this
            # worker running. Stop at a checkpoint and leave: the next `harness run` resumes.
            stop.set()
            worker.join()
            os._exit(143)
        progress = read_json(run_dir / "progress.json")
        if progress and progress != last:
            _report({"iteration": progress["iteration"], "loss": progress["loss"], "state": "running"}, run_dir,
                    progress)
            last = progress
    status = store.status(rid)
    _report({"state": status.get("state"), "mIoU": status.get("mIoU"), "exit_code": outcome.get("code")}, run_dir,
            read_json(run_dir / "progress.json"))


class Trials:
    """The runs claimed for one new Tune experiment on a connected Ray; wait() runs it."""

    def __init__(self, store: Store, claimed: list[RunSpec], final: dict[str, str], executor: dict, trainable,
                 token: str):
        self.store, self.claimed, self.final, self.executor = store, claimed, final, executor
        self.trainable, self.token = trainable, token


def submit(store: Store, runs: list[RunSpec], executor: dict, trainable=None) -> Trials:
    """Claim the runs and start or join Ray; `trainable` replaces `attempt` (tests)."""
    who = owner(backend="ray")
    claimed, final = claim_all(store, runs, who, executor["stale_after"])
    if claimed:
        try:
            print(connect(executor.get("address"), num_cpus=cores()), file=sys.stderr)
        except BaseException:
            for spec in claimed:
                store.release(spec.run_id, who["token"])
            raise
    return Trials(store, claimed, final, executor, trainable, who["token"])


def wait(handle: Trials, progress: bool = True) -> dict[str, str]:
    """Run the claimed runs as trials of one new Tune experiment."""
    store, claimed, final, executor = handle.store, handle.claimed, dict(handle.final), handle.executor
    if not claimed:
        return final
    import ray
    from ray import tune

    stale_after = executor["stale_after"]
    try:
        cpus, gpus = executor["cpus_per_trial"], executor["gpus_per_trial"]
        function = tune.with_resources(handle.trainable or attempt, {"cpu": cpus, "gpu": gpus})
        tuner = tune.Tuner(
            function,
            param_space={"threads": max(1, int(cpus)), "driver": owner(), "token": handle.token,
                         "run": tune.grid_search([{"run_id": s.run_id, "run_dir": str(store.run_dir(s.run_id))}
                                                  for s in claimed])},
            tune_config=tune.TuneConfig(max_concurrent_trials=executor.get("jobs") or 0),
            run_config=tune.RunConfig(
                name=f"{store.sweep}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str(store.backend_dir("ray")),  # absolute: trials run with another cwd
                failure_config=tune.FailureConfig(max_failures=executor["max_failures"]),
                verbose=1 if progress else 0),
        )
        grid = tuner.fit()
    finally:
        for spec in claimed:  # a trial that never started still holds the driver's claim
            info = store.claim_info(spec.run_id)
            if info and info.get("pid") == os.getpid():
                store.release(spec.run_id, handle.token)
        ray.shutdown()
    errors = {}
    for result in grid:
        if result.error is not None:
            errors[result.config["run"]["run_id"]] = result.error
    for spec in claimed:
        state = store.state(spec.run_id, stale_after)
        if spec.run_id in errors and state not in ("done", "failed", "running"):  # running: taken over
            error = errors[spec.run_id]
            store.write_error(spec.run_id, f"Ray trial failed {executor['max_failures'] + 1} time(s): "
                                           f"{type(error).__name__}: {str(error).splitlines()[0][:300]}", str(error))
            state = "failed"
        final[spec.run_id] = state
    return final


def run(store: Store, runs: list[RunSpec], executor: dict, progress: bool = True, trainable=None) -> dict[str, str]:
    return wait(submit(store, runs, executor, trainable), progress)


def alive(claims: list[dict]) -> list[bool | None]:
    return [None] * len(claims)  # a trial's worker keeps a heartbeat; the store judges by it


def cancel(claims: list[dict], pending_only: bool) -> list[str | None]:
    return [None] * len(claims)  # trials obey the cancel file; a trial not started yet stops at once


def resources(executor: dict) -> tuple[int, float | None]:
    return 1, None  # a trial is one process, as long as it takes


def describe(store: Store, runs: list[RunSpec], executor: dict) -> str:
    where = (f"the Ray cluster at {executor['address']}" if executor.get("address")
             else f"a local Ray with {cores()} CPUs, started and stopped by the harness")
    jobs = executor.get("jobs")
    return (f"ray: {len(runs)} Tune trial(s) on {where}; each trial {executor['cpus_per_trial']} CPU(s), "
            f"{executor['gpus_per_trial']} GPU(s); {jobs or 'as many as the resources allow'} at a time; "
            f"a trial that dies is retried up to {executor['max_failures']} time(s) from its checkpoint")
