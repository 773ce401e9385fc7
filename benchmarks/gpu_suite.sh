#!/usr/bin/env bash
# Issue 15's GPU measurements on one lent GPU, in under 5 minutes: one JSON line per measurement
# (benchmarks/gpu_suite.py says which), after the cuDNN-vs-XLA attention test. gpu_suite.py, like launch.py, runs
# with glibc's huge-page tunable (md4_jax/allocator.py); last, the owt_small train step again without it
# (MD4_JAX_MALLOC=default), to show the tunable does not slow a GPU run.
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR] [gpu_suite.py flags]   (OUT_DIR default: $OUT, else /tmp/gpu_suite)
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
deadline=$((SECONDS + 290))  # every stage gets at most what is left of the 5 minutes
left() { local s=$((deadline - SECONDS)); echo $((s < $1 ? (s > 1 ? s : 1) : $1)); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt" || true
# The fused kernel must compute what the XLA form computes before its speed means anything.
timeout "$(left 90)" python3 -m pytest -q -p no:cacheprovider tests/test_attention_kernels.py 2>&1 \
  | tee "$out/attention_test.txt" || echo '{"benchmark": "gpu_suite", "measurement": "attention_test", "passed": false}'
main=$(left 290)
main=$((main > 110 ? main - 80 : 30))  # the allocator check keeps its 80 s
budget=$((main > 100 ? main - 70 : 30))  # room for the last measurement to overrun the budget
timeout "$main" python3 benchmarks/gpu_suite.py --budget_seconds "$budget" "${@:2}" 2>"$out/gpu_suite.stderr" \
  | tee "$out/gpu_suite.jsonl" \
  || echo '{"benchmark": "gpu_suite", "measurement": "stopped", "stage": "main"}' | tee -a "$out/gpu_suite.jsonl"
env -u GLIBC_TUNABLES MD4_JAX_MALLOC=default timeout "$(left 80)" python3 benchmarks/gpu_suite.py "${@:2}" \
  --only owt_small_train 2>>"$out/gpu_suite.stderr" | tee -a "$out/gpu_suite.jsonl" \
  || echo '{"benchmark": "gpu_suite", "measurement": "stopped", "stage": "default_malloc"}' \
  | tee -a "$out/gpu_suite.jsonl"
