#!/usr/bin/env bash
# Issue 15's GPU measurements on one lent GPU, in under 5 minutes: one JSON line per measurement
# (benchmarks/gpu_suite.py says which), after the cuDNN-vs-XLA attention test.
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]        (OUT_DIR default: $OUT, else /tmp/gpu_suite)
#
# The device image has JAX for CUDA but not every package this project imports: run
# `bash benchmarks/gpu_wheels.sh` here first (it writes .whl/, ignored by git) and carry `.whl`.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/gpu_suite}}"
mkdir -p "$out"
if ! python3 -c "import ml_collections, tensorflow_datasets, grain, clu, tensorboardX" 2>/dev/null && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt" || true
# The fused kernel must compute what the XLA form computes before its speed means anything.
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_attention_kernels.py 2>&1 | tee "$out/attention_test.txt" \
  || echo '{"benchmark": "gpu_suite", "measurement": "attention_test", "passed": false}'
timeout 300 python3 benchmarks/gpu_suite.py --budget_seconds 220 "${@:2}" 2>"$out/gpu_suite.stderr" | tee "$out/gpu_suite.jsonl"
