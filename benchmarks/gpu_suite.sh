#!/usr/bin/env bash
# The GPU measurements on one lent GPU, in under 9 minutes of device time, each stage under a deadline:
#   1. versions of the image's jax, flax and friends (the suite runs on them: never carry jax or flax wheels);
#   2. the cuDNN-vs-XLA attention test;
#   3. benchmarks/gpu_profile.py: kernel tables of owt_small's step, bfloat16 at batch 64 with the output layer at
#      every position, then float32 at batch 32, both with model.transformer.scan_unroll=0 (copy them into benchmarks/profiles/);
#   4. benchmarks/gpu_suite.py: one JSON line per measurement (its docstring says which);
#   5. the MD4 reference code's float32 step at batch 32 beside ours, if .gpu_kit is there
#      (bash ../shared/bench/gpu_side_by_side.sh prepare, then carry .gpu_kit);
#   6. owt_small's step once more without the glibc huge-page tunable (MD4_JAX_MALLOC=default), if time is left.
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR] [gpu_suite.py flags]   (OUT_DIR default: $OUT, else /tmp/gpu_suite)
#
# The device image has JAX for CUDA but not every package this project imports: run
# `bash benchmarks/gpu_wheels.sh` here first (it writes .whl/, ignored by git) and carry `.whl`.
# GPU_SUITE_SECONDS (default 520) is the whole script's deadline.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/gpu_suite}}"
mkdir -p "$out"
if ! python3 -c "import ml_collections, tensorflow_datasets, grain, tensorboardX" 2>/dev/null && [ -d .whl ]; then
  site=$(mktemp -d /tmp/site.XXXX)  # a fresh folder: a warm machine keeps what an earlier call installed
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
deadline=$((SECONDS + ${GPU_SUITE_SECONDS:-520}))
left() { local s=$((deadline - SECONDS)); echo $((s < $1 ? (s > 1 ? s : 1) : $1)); }
stopped() { echo "{\"benchmark\": \"gpu_suite\", \"measurement\": \"stopped\", \"stage\": \"$1\"}" | tee -a "$out/gpu_suite.jsonl"; }
# At most 8 files come back from a lent machine: environment.txt, attention_test.txt, profile.md, profile.json,
# profile_float32.md, profile_float32.json, gpu_suite.jsonl and stderr.txt (every stage's stderr, in order).
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/environment.txt" || true
python3 - <<'PY' 2>&1 | tee -a "$out/environment.txt" || true
import importlib.metadata as m
names = ["jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "jax-cuda13-pjrt", "flax", "optax", "orbax-checkpoint",
         "numpy", "tensorstore", "ml-collections", "grain", "tensorflow-datasets", "tiktoken"]
for name in names:
  try:
    print(f"{name}=={m.version(name)}")
  except m.PackageNotFoundError:
    print(f"{name}: not installed")
PY
timeout "$(left 75)" python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/models/test_attention.py 2>&1 \
  | tee "$out/attention_test.txt" || echo '{"benchmark": "gpu_suite", "measurement": "attention_test", "passed": false}'
smoke=$([[ " ${*:2} " == *" --smoke "* ]] && echo --smoke || true)
profile() {  # profile NAME SECONDS [gpu_profile.py flags]: NAME.md and NAME.json come back
  timeout "$(left "$2")" python3 benchmarks/gpu_profile.py --out "$out/$1" --config.model.transformer.scan_unroll=0 "${@:3}" \
    $smoke 2>>"$out/stderr.txt" | tee -a "$out/gpu_suite.jsonl" || stopped "$1"
  for ext in md json; do [ -f "$out/$1/profile.$ext" ] && cp "$out/$1/profile.$ext" "$out/$1.$ext"; done || true
  rm -rf "${out:?}/$1"  # the trace is hundreds of MB; the tables (copied above) are what comes back
}
profile profile 100 --config.train.logits_capacity=1.0
profile profile_float32 70 --dtype float32 --batch 32
kit=$([ -d .gpu_kit ] && [ -z "$smoke" ] && echo 130 || echo 0)
main=$(( $(left 600) - kit - 60 ))
main=$((main > 60 ? main : 60))
budget=$((main > 100 ? main - 50 : 30))  # room for the last measurement to overrun the budget
timeout "$main" python3 benchmarks/gpu_suite.py --budget_seconds "$budget" "${@:2}" 2>>"$out/stderr.txt" \
  | tee -a "$out/gpu_suite.jsonl" || stopped main
if [ "$kit" -gt 0 ]; then
  timeout "$(left "$kit")" bash .gpu_kit/gpu_side_by_side.sh run 32 5 2>>"$out/stderr.txt" \
    | tee -a "$out/gpu_suite.jsonl" || stopped side_by_side
fi
if [ "$(left 60)" -ge 50 ]; then
  env -u GLIBC_TUNABLES MD4_JAX_MALLOC=default timeout "$(left 60)" python3 benchmarks/gpu_suite.py "${@:2}" \
    --only owt_small_train 2>>"$out/stderr.txt" | tee -a "$out/gpu_suite.jsonl" || stopped default_malloc
fi
tail -c 4000000 "$out/stderr.txt" > "$out/stderr.tmp" 2>/dev/null && mv "$out/stderr.tmp" "$out/stderr.txt" || true
