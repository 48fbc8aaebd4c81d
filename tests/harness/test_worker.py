"""The worker's record of how a run ended, when the run itself is not to blame."""
from __future__ import annotations

import errno
import os
from types import SimpleNamespace

from conftest import tiny_spec
from harness import launch, worker
from harness.store import Store
from protoseg import io


def test_a_full_disk_leaves_the_run_crashed_and_resumable_not_failed(tmp_path, monkeypatch):
    """ENOSPC while the run writes: no error.txt, no 'failed' that only --retry-failed would take up; the run
    reads crashed, says why, and the same command resumes it from its last checkpoint to the end."""
    store = Store(tmp_path, "full")
    spec = tiny_spec(train={"iterations": 4, "checkpoint_interval": 2, "keep_checkpoints": 1})
    store.prepare("r1", spec, {})
    real, saves = io.atomic_torch_save, []

    def fills_at_the_second(path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(io, "atomic_torch_save", fills_at_the_second)
    monkeypatch.setattr("protoseg.checkpoint.atomic_torch_save", fills_at_the_second)
    assert worker.execute(store.run_dir("r1")) == 1
    status = store.status("r1")
    assert store.state("r1") == "crashed" and "filesystem is full" in status["error"], status
    assert not (store.run_dir("r1") / "error.txt").exists() and store.has_checkpoint("r1")
    assert launch.plan(store, [SimpleNamespace(run_id="r1")], force=False, retry_failed=False, stale_after=120)[0][1] == "resume"

    assert worker.execute(store.run_dir("r1")) == 0  # space again
    status = store.status("r1")
    assert store.state("r1") == "done" and status["attempts"] == 2 and status["resumed"] is True
