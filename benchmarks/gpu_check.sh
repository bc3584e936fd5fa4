#!/usr/bin/env bash
# Fill BENCHMARKS.md's GPU section on a machine with a CUDA GPU, in under 8 minutes:
#  1. trials sharing the GPU: benchmarks/gpu_study.yaml (2 trials at gpus_per_trial 0.5, at once) as a bf16 study
#     and as an fp32 study (bench_gpu_training.py -> benchmarks/results/gpu_training.json: images per second of
#     every trial and epoch from MLflow, the device each trial trained on, the bf16 / fp32 ratio);
#  2. early-exit inference on CUDA (EarlyExitPredictor vs the full network vs every exit then choose, at batch 1 and
#     256, the measured / predicted speed-up; bench_inference.py -> benchmarks/results/inference_cuda.json);
#  3. BENCHMARKS.md re-rendered (benchmarks/report.py).
#
#   make setup && make data         # on the GPU machine: the CUDA build of torch, the Fashion-MNIST files
#   benchmarks/gpu_check.sh         # extra arguments go to bench_inference.py (e.g. --samples 20480)
#
# Step 2 trains the benchmark model (on the CPU, as in `make bench`; about a minute) unless benchmarks/cache/ holds
# it. Each step has a time limit, so a hung step cannot eat the machine's time; a failed step stops the script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1
started=$SECONDS
say() { echo "gpu_check [$((SECONDS - started)) s]: $*"; }
"$PY" -c 'import sys, torch; sys.exit(0) if torch.cuda.is_available() else sys.exit(
    "gpu_check: torch.cuda.is_available() is False (no GPU, or a CPU build of torch: run make setup on the GPU machine)")'
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
"$PY" -m eeopt.cli data find fashion-mnist >/dev/null || {
    echo "gpu_check: the Fashion-MNIST files are missing: run make data" >&2; exit 1; }
say "1/3 trials sharing the GPU (bf16 study, then fp32 study)"
timeout 300 "$PY" benchmarks/bench_gpu_training.py
say "2/3 early-exit inference on CUDA"
timeout 240 "$PY" benchmarks/bench_inference.py --device cuda --threads 1 --samples 10240 --samples-b1 1000 "$@"
say "3/3 BENCHMARKS.md"
"$PY" benchmarks/report.py
say "done"
