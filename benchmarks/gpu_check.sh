#!/usr/bin/env bash
# Fill BENCHMARKS.md's GPU section on a machine with a CUDA GPU (a few minutes): the early-exit inference benchmark
# on CUDA (EarlyExitPredictor vs the full network vs every exit then choose, at batch 1 and 256, per-exit latency
# next to FLOPs), written to benchmarks/results/inference_cuda.json, then BENCHMARKS.md re-rendered.
#
#   make setup                      # on the GPU machine: installs the CUDA build of torch
#   benchmarks/gpu_check.sh         # extra arguments go to bench_inference.py (e.g. --samples 10240)
#
# The benchmark model is trained (on the CPU, as in `make bench`) unless benchmarks/cache/ already holds it; the
# Fashion-MNIST files must be where `eeopt data find fashion-mnist` finds them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1
"$PY" -c 'import sys, torch; sys.exit(0) if torch.cuda.is_available() else sys.exit(
    "gpu_check: torch.cuda.is_available() is False (no GPU, or a CPU build of torch: run make setup on the GPU machine)")'
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
"$PY" benchmarks/bench_inference.py --device cuda --threads 1 --samples 10240 --samples-b1 1000 "$@"
"$PY" benchmarks/report.py
