#!/usr/bin/env bash
# One command for a GPU: under 8 minutes on one GPU, prints
#   - HRNet-W48 training step, parametric vs ProtoSeg, at 1024x512, batch 2, AMP, and both heads' FPS;
#   - the prototype step, per-class loop against vectorised, at K = 19 and 150 on CUDA;
#   - model.norm SyncBN: HRNet-W48's BatchNorms converted and, with 2 GPUs, synchronised across ranks.
# Without CUDA it runs the same checks at CPU sizes (CI tests it that way).
#   benchmarks/gpu_check.sh            (PYTHON=... to use another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "== HRNet-W48, Cityscapes crop 1024x512, batch 2, AMP: training step and inference FPS"
    "$PY" benchmarks/bench_train_step.py --backbone hrnet_w48 --size 512 1024 --batch 2 --classes 19 \
        --amp --repeats 10 --fps 50 --complexity-size 1024
    echo "== prototype step: the official per-class loop against the vectorised step, K = 19 and 150"
    "$PY" benchmarks/bench_prototypes.py --device cuda --k 19 150
    echo "== SyncBN: conversion and one training step on every GPU (at most 2)"
    "$PY" benchmarks/check_syncbn.py --backbone hrnet_w48
else
    echo "no CUDA device: the same checks at CPU sizes"
    "$PY" benchmarks/bench_train_step.py --backbone hrnet_w18_small --size 64 128 --batch 2 --classes 19 \
        --dim 32 --repeats 1 --fps 3 --complexity-size 64
    "$PY" benchmarks/bench_prototypes.py --device cpu --k 19 150 --hw 80 --repeats 1 --warmup 1
fi
