"""The long help texts of `harness --help` and its commands' --help."""
from .matrix import MAX_CELLS


DESCRIPTION = "ProtoSeg sweeps: run, status, cancel, report, estimate, evaluate, show, diff"
COMMANDS = {  # each command's one-line help, also its --help description
    "run": "run every cell of an experiment file that is not done",
    "status": "one line per run and a summary",
    "cancel": "stop a sweep's queued and running runs at a checkpoint (scancel on SLURM)",
    "report": "paper-style table of a sweep (each sweep on its own when none is named)",
    "estimate": "time each distinct model of an experiment's cells not done yet: wall time per cell, "
                "device-hours, wall-clock at the sweep's parallelism",
    "evaluate": "score a finished run's (or a sweep's finished runs') final weights on a split, data "
                "root or protocol",
    "show": "one run: its settings, state, provenance (code commit, library versions), log tail, error",
    "diff": "the spec fields in which two runs differ",
}
HELP = {  # the arguments' longer help texts
    "run --smoke": "every cell end to end on CPU in minutes: generated data in each dataset's layout, tiny "
                   "crops and iterations, real architectures; into the sweep <name>-smoke",
    "run --set": "override executor.<key> or base.<spec path>",
    "run --max-cells": f"refuse a matrix of more cells, counted from its axes before expanding it "
                       f"(default {MAX_CELLS:,})",
    "status target": "experiment file (its cells not created yet are listed too) or "
                     "sweep name (default: every sweep)",
    "cancel --grace": "seconds a running run gets to write its checkpoint before scancel (default 60)",
    "report target": "experiment file (its cells not created yet are counted as missing) "
                     "or sweep name (default: every sweep, one table each)",
    "report --layout": "runs: one row per backbone x method, every column (default); paper: the paper's Tables "
                       "1-2, baseline and Ours rows per backbone, ours beside the paper's numbers (md or latex)",
    "estimate --batch": "time at this per-device batch and scale per image to the cell's "
                        "(on a CPU: 2, so that big models fit and table2 takes minutes)",
    "estimate --crop-scale": "time at each crop side x F (0 < F <= 1) and scale per pixel (on a CPU: 0.5)",
    "evaluate RUN": "a finished run: its id or a prefix of one, SWEEP/ID or its folder; or a sweep (name or "
                    "folder): all its finished runs",
    "evaluate --resize": "rescale each image into a LONG x SHORT box first, keeping its ratio (ADE20K: 2048 512)",
}
ONLY_HELP = ("{what}: KEY=VALUE terms, AND within one --only (apart by commas), OR across repeated "
             "--only and between values (seed=0|1); KEY a spec path, its last part (head, seed) or preset; "
             "id=PREFIX for run ids (see the README's 'Selecting cells')")
EXAMPLES = {
    "run": """examples:
  harness run experiments/quickstart.yaml                     # every cell not done; again to resume
  harness run experiments/table2.yaml --dry-run               # the plan: run ids, settings, what would run
  harness run experiments/table2.yaml --smoke                 # every cell end to end on CPU in minutes
  harness run experiments/camvid.yaml --only 'head=parametric,seed=0|1'
  harness run experiments/table2.yaml --backend slurm --profile mycluster --set executor.jobs=8""",
    "status": """examples:
  harness status                                   # every sweep under results/
  harness status experiments/camvid.yaml           # that sweep, and its cells not created yet
  harness status camvid --only head=parametric --watch""",
    "cancel": """examples:
  harness cancel experiments/table2.yaml           # queued and running runs stop at a checkpoint
  harness cancel table2 --only preset=hrnet48_cityscapes""",
    "report": """examples:
  harness report camvid                            # Markdown table, with how many runs each row has
  harness report table2 --layout paper --format latex --out table2.tex
  harness report quickstart --plots figures/       # and the figures""",
    "estimate": """examples:
  harness estimate experiments/camvid.yaml                     # cells not done yet, timed here
  harness estimate experiments/table2.yaml --batch 2 --crop-scale 0.5 --profile mycluster""",
    "evaluate": """examples:
  harness evaluate e630d51a9ce1 --split test       # a run, by id or a prefix of one
  harness evaluate camvid --scales 0.5 1.0 1.5 --flip  # every finished run of a sweep""",
    "show": """examples:
  harness show e630d5                              # settings, state, provenance, log tail, error""",
    "diff": """examples:
  harness diff e630d5 876c21                       # the settings that differ between two runs""",
}

EXIT_CODES = """exit codes: 0 every selected cell done (or left running elsewhere, or taken over there); 1 some
cells failed or crashed (counted and listed); 2 invalid input (experiment file, spec, sweep name) or a
results folder the harness cannot use (read-only, full, no flock, a symbolic link inside); 3 the
backend's cluster cannot be reached; 4 an internal error (a bug: please report the traceback);
128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP: running runs checkpointed)"""

LINKED_RESULTS = ("the --results folder itself may be a symbolic link (to cluster scratch, say); links "
                  "inside it stay refused")
TRUST_FLOCK = ("use a --results folder on a filesystem whose flock may hold within one mount only (FUSE, NFS "
               "with local locks, Lustre -o localflock, BeeGFS): every process that uses it goes through this "
               "one mount, or the filesystem forwards its locks")
