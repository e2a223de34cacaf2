#!/usr/bin/env bash
# Issue 46 on a machine with an NVIDIA GPU, in one go (the device tool runs
# it from the repository root): the CUDA tests, the model alone and the
# service with CPU and batched device decode, 1 and 4 processes, and the
# no-op-model overhead bench. Output goes to $OUT (default bench/out/gpu).
# Needs ../shared beside the checkout, and the venv (make install) or a
# python3 with torch, torchvision, grpcio and the project's packages.
set -uo pipefail
OUT="${OUT:-bench/out/gpu}"
mkdir -p "$OUT"
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee "$OUT/versions.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
if command -v nvidia-cuda-mps-control >/dev/null; then
  nvidia-cuda-mps-control -d && echo "MPS started" | tee -a "$OUT/gpu.txt"
fi
$PY -m pytest -q -p no:cacheprovider tests/embedder_service/test_device_decode.py \
  -k "cuda" 2>&1 | tail -15 | tee "$OUT/cuda_tests.txt"
$PY bench/embedder.py --device cuda --dtypes float16 --batches 256 --seconds 10 \
  --decodes pil,device --processes 1,4 --client-procs 8 2>&1 | tee "$OUT/embedder.txt"
$PY -m bench.embedder_overhead --seconds 8 2>&1 | tail -8 | tee "$OUT/overhead.txt"
