#!/usr/bin/env bash
# Creates .venv in the project root and installs the project into it, with
# constraints.txt pinning torch and torchvision to the tested versions. The
# pins name versions, not builds: which build comes follows from pip's indexes.
#   CUDA cluster (PyPI's Linux wheels are CUDA builds):  ./install.sh
#   CPU laptop:  PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu ./install.sh
#   other pins:  PROTOSEG_CONSTRAINTS=/path/to/file ./install.sh
set -euo pipefail
CONSTRAINTS=${PROTOSEG_CONSTRAINTS:-}
case $CONSTRAINTS in  # a relative path is relative to where you ran this
    "" | /*) ;;
    *) CONSTRAINTS=$PWD/$CONSTRAINTS ;;
esac
cd "$(dirname "$0")"
CONSTRAINTS=${CONSTRAINTS:-constraints.txt}
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c "$CONSTRAINTS" -e ".[test]" 2> >(grep -v "is ignored: it is neither" >&2)
TORCH=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("torch"))')
echo "installed into $(pwd)/.venv (torch $TORCH)"
