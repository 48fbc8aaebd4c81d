"""SLURM backend through submitit: the pending runs go out as ONE job array.

Each array task runs `RunJob(run_dir)`. On a time-out or a preemption SLURM
sends USR2; submitit then calls `RunJob.checkpoint()`, which stops the engine
at a checkpoint and hands the run back to the job, and requeues the job; the
requeued task resumes from that checkpoint. The run store stays the truth:
job ids go into status.json as soon as sbatch returns, and a run's claim
lives as long as squeue lists its job, so `harness run` again after the
submitting shell died submits nothing twice.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from .. import backends
from ..progress import RunBar
from ..store import STALE_AFTER, LostClaim, Store, each_run, owner
from ..worker import execute, store_of
from . import BackendUnavailable, Setting, claim_all, integer, number, optional, slurm_jobs, text

if TYPE_CHECKING:
    from ..matrix import RunSpec

POLL_S = 2.0
FINAL = ("done", "failed", "cancelled", "crashed")
# a cluster's values belong in a profile: slurm/profiles/NAME.yaml, --profile NAME
SETTINGS = {
    **{key: Setting(None, text, "null or a non-empty string") for key in ("partition", "account", "qos")},
    "timeout_min": Setting(1440, integer(1), "a positive whole number of minutes",
                           "time limit per job; at its end the run checkpoints and is requeued"),
    "cpus_per_task": Setting(None, optional(integer(1)), "null or a positive integer",
                             "None = the cluster's default; torch uses this many threads"),
    "gpus_per_task": Setting(0, integer(), "an integer >= 0"),
    "tasks_per_node": Setting(1, integer(1), "a positive integer", "> 1: one DDP process per task (and per GPU)"),
    "nodes": Setting(1, integer(1), "a positive integer",
                     "> 1: one DDP run across this many nodes, tasks_per_node processes on each"),
    "mem_gb": Setting(None, optional(number()), "null or a positive number of GB"),
    "constraint": Setting(None, text, "null or a non-empty string"),
    "setup": Setting([], lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                     "a list of shell lines", "run before the job (module load ..., source venv)"),
    "sbatch": Setting({}, lambda v: isinstance(v, dict), "a mapping of sbatch flag to value",
                      "any other sbatch flag, e.g. {exclude: node12, mail-type: END}"),
    "max_timeouts": Setting(3, integer(), "an integer >= 0",
                            "requeues after a time-out before the run is marked failed"),
    "signal_delay_s": Setting(120, integer(1), "a positive whole number of seconds",
                              "USR2 this long before the limit: must cover an iteration + an eval + a checkpoint"),
    "wait": Setting(True, lambda v: isinstance(v, bool), "true or false",
                    "wait for the jobs with a progress bar; false: submit and return"),
}
DETACHED = True  # the jobs run on when the submitting harness stops


def job_name(store: Store) -> str:
    return f"protoseg-{store.sweep}"


def parameters(executor: dict, name: str) -> dict:
    """The executor section as submitit AutoExecutor parameters."""
    params = {"name": name, "timeout_min": executor["timeout_min"], "nodes": executor["nodes"],
              "tasks_per_node": executor["tasks_per_node"],
              "slurm_signal_delay_s": executor["signal_delay_s"],
              "slurm_setup": list(executor["setup"]),
              "slurm_additional_parameters": dict(executor["sbatch"])}
    if executor["jobs"]:
        params["slurm_array_parallelism"] = executor["jobs"]
    if executor["gpus_per_task"]:
        params["gpus_per_node"] = executor["gpus_per_task"] * executor["tasks_per_node"]
    for key, parameter in (("cpus_per_task", "cpus_per_task"), ("mem_gb", "mem_gb"), ("partition", "slurm_partition"),
                           ("account", "slurm_account"), ("qos", "slurm_qos"), ("constraint", "slurm_constraint")):
        if executor[key] is not None:
            params[parameter] = executor[key]
    return params


def make_executor(folder: Path, executor: dict, name: str):
    import submitit

    try:
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=executor["max_timeouts"])
    except RuntimeError as err:  # no srun here
        raise BackendUnavailable(f"SLURM is not available on this machine: {err}") from None
    ex.update_parameters(**parameters(executor, name))
    return ex


def sbatch_script(executor: dict, folder: Path, count: int, name: str = "protoseg") -> str:
    """The sbatch file submitit writes for an array of `count` runs (what `--dry-run` shows)."""
    from submitit.slurm.slurm import _make_sbatch_string

    ex = make_executor(folder, executor, name)._executor
    return _make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder,
                               map_count=count if count > 1 else None, **ex.parameters)


class RunJob:
    """What each array task runs; checkpointable, so submitit requeues it on USR2."""

    def __init__(self, run_dir: str, max_timeouts: int = 3, stale_after: float = STALE_AFTER):
        self.run_dir, self.max_timeouts, self.stale_after = run_dir, max_timeouts, stale_after

    def _leave(self, store: Store, rid: str, who: dict, rank: int) -> str | None:
        """Why this task has nothing to do, or None. Every rank asks, so no rank waits alone for the others."""
        job = who["job_id"]
        if store.is_done(rid) or store.cancel_path(rid).exists():
            return "the run is done or cancelled"
        if rank == 0:  # takes the run under its lock
            return None if store.take_for_job(rid, who, self.stale_after) else "another owner holds the run"
        held = store.claim_info(rid) or {}
        if held.get("job_id") not in (None, job) and store.claim_alive(rid, self.stale_after):
            return f"SLURM job {held['job_id']} holds the run"
        return None

    def __call__(self) -> int:
        import submitit

        env = submitit.JobEnvironment()
        store, rid = store_of(Path(self.run_dir), backends.alive)  # is another job's claim alive: squeue
        who = owner(backend="slurm", job_id=env.job_id)
        reason = self._leave(store, rid, who, env.global_rank)
        if reason:
            print(f"{rid}: {reason}; job {env.job_id} leaves it", file=sys.stderr)
            return 0
        if env.num_tasks > 1:  # one DDP process per task: torch's env:// rendezvous from SLURM's variables
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        if env.global_rank != 0:
            return _follow(self.run_dir)
        self._stop, self._requeue, outcome = threading.Event(), threading.Event(), {}
        self._thread = threading.Thread(target=lambda: outcome.update(code=execute(
            self.run_dir, backend="slurm", job_id=env.job_id, stop=self._stop, requeue=self._requeue,
            token=who["token"])))
        self._thread.start()
        try:
            while self._thread.is_alive():
                self._thread.join(1.0)  # short joins: submitit's USR2 handler runs in this (main) thread
        except submitit.core.utils.UncompletedJobError as err:  # from the handler: no requeue
            if store.status(rid).get("state") == "queued":  # handed back for a requeue that will not come
                with contextlib.suppress(LostClaim):
                    store.write_error(rid, f"SLURM job {env.job_id} timed out more than executor.max_timeouts="
                                           f"{self.max_timeouts} times ({err}); its checkpoint is kept: "
                                           f"`harness run --retry-failed` resumes it", traceback.format_exc(),
                                      who["token"])
                store.release(rid, who["token"])
            raise
        return outcome.get("code", 1)

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on USR2: stop at a checkpoint; requeue only a run that was handed back
        (not one that finished, failed or was cancelled just before the signal)."""
        from submitit.helpers import DelayedSubmission

        self._requeue.set()
        self._stop.set()
        self._thread.join()
        store, rid = store_of(Path(self.run_dir))
        if store.status(rid).get("state") != "queued":
            return None
        return DelayedSubmission(RunJob(**self.__getstate__()))

    def __getstate__(self):  # only these travel in the pickle
        return {"run_dir": self.run_dir, "max_timeouts": self.max_timeouts, "stale_after": self.stale_after}

    def __setstate__(self, state):
        self.__init__(**state)


def _follow(run_dir: str) -> int:
    """DDP ranks > 0: train alongside rank 0, which keeps the store; the engine stops all ranks together."""
    from protoseg import engine, phases

    from ..store import load_spec

    try:
        engine.run(load_spec(Path(run_dir)), run_dir)
    except phases.Interrupted:
        return 143
    return 0


def _submit(store: Store, runs: list[RunSpec], executor: dict) -> list:
    folder = store.backend_dir("slurm")
    ex = make_executor(folder, executor, job_name(store))
    import submitit

    try:
        with ex.batch():
            jobs = [ex.submit(RunJob(str(store.run_dir(r.run_id)), executor["max_timeouts"], executor["stale_after"]))
                    for r in runs]
    except submitit.core.utils.FailedJobError as err:
        raise BackendUnavailable(f"sbatch refused the job array: {str(err).strip() or err!r}") from None
    return jobs


def _explain_crashes(store: Store, crashed: dict[str, str]) -> None:
    """A run whose job ended without it finishing: say how the job ended (sacct)."""
    ends = slurm_jobs.end_states(crashed.values())
    for rid, job in crashed.items():
        if store.status(rid).get("state") == "crashed":  # the worker said why (a full disk, a lost DDP peer)
            continue
        store.update(rid, state="crashed", error=f"SLURM job {job} ended {ends.get(job, 'without a word')} before "
                                                  f"the run finished; run the same command again to resume it")


class Submitted:
    """Runs handed to SLURM jobs: {run id: job id} of the claimed ones, the others' reasons."""

    def __init__(self, store: Store, runs: list[RunSpec], ids: dict[str, str], final: dict[str, str], executor: dict):
        self.store, self.runs, self.ids, self.final, self.executor = store, runs, ids, final, executor


def submit(store: Store, runs: list[RunSpec], executor: dict, follow: list[RunSpec] = ()) -> Submitted:
    """Claim the runs, sbatch them as one array, hand each claim to its job; with the runs to `follow`,
    which jobs of an earlier `harness run` hold (a driver killed or logged out, then started again)."""
    me = owner(backend="slurm")
    claimed, final = claim_all(store, runs, me, executor["stale_after"])
    followed = {spec.run_id: job for spec in follow if (job := store.status(spec.run_id).get("job_id"))}
    follow = [spec for spec in follow if spec.run_id in followed]
    if followed:
        print(f"following {len(followed)} run(s) that SLURM jobs of an earlier `harness run` hold",
              file=sys.stderr)
    if not claimed:
        return Submitted(store, follow, followed, final, executor)
    # no Ctrl-C between sbatch and the job ids in the store: the jobs would exist unrecorded
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        try:
            jobs = _submit(store, claimed, executor)
        except BaseException:
            for spec in claimed:
                store.release(spec.run_id, me["token"])
            raise
        def hand(pair) -> None:
            spec, job = pair
            store.hand_to_job(spec.run_id, me, {**me, "job_id": job.job_id, "pid": None}, job_id=job.job_id,
                              backend="slurm", log=str(job.paths.stderr), submitted=time.time())

        each_run(hand, list(zip(claimed, jobs)))  # its threads inherit the blocked SIGINT
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    first = jobs[0].job_id.split("_")[0]
    at_once = f", {executor['jobs']} at a time" if executor["jobs"] else ""
    print(f"submitted {len(jobs)} run(s) to SLURM as job {first}{' (array' + at_once + ')' if len(jobs) > 1 else ''}; "
          f"logs in {store.dir / '.slurm'}", file=sys.stderr)
    return Submitted(store, [*claimed, *follow], {**{spec.run_id: job.job_id for spec, job in zip(claimed, jobs)},
                                                  **followed}, final, executor)


def wait(handle: Submitted, progress: bool = True) -> dict[str, str]:
    """Follow the jobs until each run ends; with executor.wait false, return at once ("queued")."""
    store, final = handle.store, dict(handle.final)
    if not handle.ids:
        return final
    if not handle.executor["wait"]:
        print(f"not waiting (executor.wait: false); follow with `harness status {store.sweep} --watch`",
              file=sys.stderr)
        return {**final, **{rid: "queued" for rid in handle.ids}}
    try:
        return {**final, **_wait(store, handle.runs, handle.ids, handle.executor["stale_after"], progress)}
    except KeyboardInterrupt:
        print(f"\nstopped waiting; the jobs keep running on SLURM. Follow them with `harness status "
              f"{store.sweep} --watch`, stop them with `harness cancel {store.sweep}`", file=sys.stderr)
        raise


def run(store: Store, runs: list[RunSpec], executor: dict, progress: bool = True) -> dict[str, str]:
    return wait(submit(store, runs, executor), progress)


def alive(claims: list[dict]) -> list[bool | None]:
    """A claim with a job id lives as long as squeue lists its job (one squeue call for all)."""
    return slurm_jobs.alive_many(claim.get("job_id") for claim in claims)


def cancel(claims: list[dict], pending_only: bool) -> list[str | None]:
    """scancel the claims' jobs (`pending_only`: only those still in the queue), in one call."""
    jobs = [claim.get("job_id") for claim in claims]
    cancelled = slurm_jobs.cancel(jobs, pending_only=pending_only)
    return [f"SLURM job {job} scancelled" if job and str(job) in cancelled else None
            for job in jobs]


def resources(executor: dict) -> tuple[int, float | None]:
    """A run is one job of tasks_per_node processes on each of its nodes, requeued up to max_timeouts times
    after its timeout_min."""
    return executor["nodes"] * executor["tasks_per_node"], executor["timeout_min"] * (executor["max_timeouts"] + 1)


def describe(store: Store, runs: list[RunSpec], executor: dict) -> str:
    try:
        return "the sbatch file:\n" + sbatch_script(executor, store.backend_dir("slurm"), len(runs), job_name(store))
    except BackendUnavailable as err:
        return f"(no sbatch file: {err})"


def _wait(store: Store, runs: list[RunSpec], ids: dict[str, str], stale_after: float, progress: bool) -> dict:
    bar = RunBar(store, runs, f"{store.sweep} on SLURM", progress)
    final: dict[str, str] = {}
    try:
        while len(final) < len(runs):
            open_ = [rid for rid in ids if rid not in final]
            try:
                slurm_jobs.prefetch(ids[rid] for rid in open_)
            except slurm_jobs.SlurmUnavailable as err:  # judge nothing on a squeue that did not answer
                bar.note(f"squeue: {err}; asking again")
                time.sleep(10 * POLL_S)
                continue
            states = {rid: store.state(rid, stale_after) for rid in open_}
            for rid, state in states.items():
                if state == "crashed" and store.cancel_path(rid).exists():  # scancelled by `harness cancel`
                    store.record_cancelled(rid)
                    states[rid] = "cancelled"
            crashed = {rid: ids[rid] for rid, s in states.items() if s == "crashed"}
            if crashed:
                _explain_crashes(store, crashed)
            for rid, state in states.items():
                if state in FINAL:
                    final[rid] = state
                    bar.finish(rid, state)
            bar.show(queued=sum(s == "queued" for s in states.values()),
                     running=sum(s == "running" for s in states.values()))
            if len(final) < len(runs):
                time.sleep(POLL_S)
    finally:
        bar.close()
    return final
