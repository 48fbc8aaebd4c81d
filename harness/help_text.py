"""The long help texts of `harness --help` and its commands' --help."""

ONLY_HELP = ("select cells: KEY=VALUE terms, AND within one --only (apart by commas), OR across repeated "
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
