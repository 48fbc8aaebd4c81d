"""A small sweep on a two-node dev SLURM under every kind of fault of benchmarks/bench_cluster_faults.py:
each cell done exactly once, and the same mIoU per run id as the same cells without faults."""
from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, needs_dev_slurm

pytestmark = [pytest.mark.slow, needs_dev_slurm]


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_cluster_faults", ROOT / "benchmarks" / "bench_cluster_faults.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_fault_once_and_every_cell_done_once_with_the_fault_free_results():
    bench = bench_module()
    work = Path(tempfile.mkdtemp(prefix="faults-", dir="/tmp"))  # not tmp_path: munged must reach the cluster
    figures = bench.bench(work, cells=12, nodes=2, jobs=4, gap=3, seed=0, tmpfs_mb=512, order=bench.FAULTS,
                          reference="local")  # the fault-free cells on the local backend: a minute less
    injected = [kind for _, kind, _ in figures["faulted"]["faults"]]
    assert injected == list(bench.FAULTS), figures["faulted"]["faults"]
    check = figures["check"]
    assert check["done_once"], check
    assert check["identical_miou"], check["differ"]
    assert max(check["attempts"]) > 1  # the faults reached runs: some needed another attempt
    assert figures["clean"]["squeue_calls_per_status"] == 1
    assert (work / "cells_done.png").stat().st_size > 0
    shutil.rmtree(work)
