#!/usr/bin/env bash
# Creates .venv in the project root and installs the project into it.
# torch stays on the CPU build here through constraints.txt; on a GPU cluster
# pass your own constraints: PROTOSEG_CONSTRAINTS=/path/to/file ./install.sh
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
CONSTRAINTS=${PROTOSEG_CONSTRAINTS:-constraints.txt}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c "$CONSTRAINTS" -e ".[test]" 2> >(grep -v "is ignored: it is neither" >&2)
echo "installed into $(pwd)/.venv"
