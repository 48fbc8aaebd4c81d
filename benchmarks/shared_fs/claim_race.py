"""Two harness processes take over one stale claim, each through its own mount of one results folder:
A is slow between its staleness check and its write (a loaded node), B comes in meanwhile. Where flock
through one mount excludes flock through the other, B waits for A and then leaves the run to it;
where it does not, both take the run (A deletes B's fresh claim and writes its own).

usage: python claim_race.py RESULTS_VIA_MOUNT_A RESULTS_VIA_MOUNT_B SWEEP   (the project root on PYTHONPATH)
"""
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

from harness.store import Store, owner


def take(root: Path, sweep: str, name: str, slow: bool, out) -> None:
    store = Store(root, sweep)
    if slow:
        alive = store.claim_alive
        store.claim_alive = lambda *a, **k: (alive(*a, **k), time.sleep(2))[0]
    start = time.time()
    got = store.claim("r1", owner(backend="local", name=name), stale_after=60)
    out.put((name, got, round(time.time() - start, 2)))
    time.sleep(3)  # stays alive a while: a live owner's claim is not taken over


def main() -> None:
    a, b, sweep = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    claim = Store(a, sweep).run_dir("r1") / "claim"
    claim.parent.mkdir(parents=True)
    claim.write_text(json.dumps({"host": "gone-node", "pid": 1, "token": "old"}))
    os.utime(claim, (time.time() - 3600,) * 2)  # an hour without a heartbeat: stale
    out = multiprocessing.Queue()
    first = multiprocessing.Process(target=take, args=(a, sweep, "A", True, out))
    first.start()
    time.sleep(0.7)
    second = multiprocessing.Process(target=take, args=(b, sweep, "B", False, out))
    second.start()
    results = sorted([out.get(timeout=60), out.get(timeout=60)])
    first.join()
    second.join()
    print("; ".join(f"{name} claim -> {got} after {took} s" for name, got, took in results)
          + f"; both took the run: {all(got for _, got, _ in results)}")


if __name__ == "__main__":
    main()
