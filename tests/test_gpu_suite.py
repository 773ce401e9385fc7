"""benchmarks/gpu_suite.sh runs end to end (on the CPU, with --smoke shapes): the script a lent GPU gets must
not be its first run. Its numbers on a CPU mean nothing; its lines and fields are checked."""

import json
import subprocess

import pytest

from md4_jax.engine import trace_table
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # whole runs: the full suite only (README)


def test_the_gpu_suite_runs_and_writes_one_json_line_per_measurement(tmp_path):
  done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_suite.sh"), str(tmp_path), "--smoke", "--steps", "1",
                         "--only", "owt_small_train,owt_small_train_every_position_unrolled,owt_small_sample,cached_sample"], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-2000:] + (tmp_path / "stderr.txt").read_text()[-3000:]
  # At most 8 files come back from a lent machine, none in a sub-folder deeper than two.
  assert sorted(p.name for p in tmp_path.iterdir()) == ["attention_test.txt", "environment.txt", "gpu_suite.jsonl",
                                                        "profile.json", "profile.md", "profile_float32.json",
                                                        "profile_float32.md", "stderr.txt"]
  assert "passed" in (tmp_path / "attention_test.txt").read_text()
  assert "jax==" in (tmp_path / "environment.txt").read_text() and "flax==" in (tmp_path / "environment.txt").read_text()
  lines = [json.loads(line) for line in (tmp_path / "gpu_suite.jsonl").read_text().splitlines()]
  profiles, lines = lines[:2], lines[2:]
  assert [line.get("measurement", line["benchmark"]) for line in lines] == [
      "device", "owt_small_train", "owt_small_train_every_position_unrolled", "owt_small_sample",
      "owt_small_sample", "cached_sample", "cached_sample", "cached_sample", "device", "owt_small_train"]
  # The profiles: bfloat16 with every position through the output layer, then float32; both unrolled.
  assert [line["benchmark"] for line in profiles] == ["gpu_profile", "gpu_profile"]
  assert "bfloat16" in profiles[0]["title"] and "logits_capacity 1.0" in profiles[0]["title"]
  assert "float32" in profiles[1]["title"] and all("(unroll 0)" in line["title"] for line in profiles)
  for name in ("profile", "profile_float32"):
    profile = json.loads((tmp_path / f"{name}.json").read_text())
    assert profile["kernels"] and profile["device_ms_per_step"] > 0 and "| 1 |" in (tmp_path / f"{name}.md").read_text()
  train, unrolled, train_default_malloc = lines[1], lines[2], lines[9]
  assert train["fits"] and train["tokens_per_sec"] > 0 and train["dtype"] == "bfloat16"
  assert train["mfu"] is None  # no published peak for a CPU
  assert train["scan_unroll"] == 1 and train["logits_capacity"] == -1.0  # as configured
  assert unrolled["fits"] and unrolled["scan_unroll"] == 0 and unrolled["logits_capacity"] == 1.0
  assert [line["sampler"] for line in lines[3:5]] == ["exact:1", "ancestral:4"]
  assert all(line["tokens_per_sec"] > 0 for line in lines[3:8])
  assert [(line["objective"], line["sampler"]) for line in lines[5:8]] == [
      ("md4", "parallel:0.9:dual"), ("bd3", "ancestral:8:exact"), ("bd3", "ancestral:8:none")]
  assert lines[6]["nfe"] == lines[7]["nfe"] == 8  # cached or not, one call per step
  # The allocator check: the same step, once with the tunable launch.py sets and once without.
  assert train["huge_pages"] and not train_default_malloc["huge_pages"]
  assert train_default_malloc["fits"] and train_default_malloc["tokens_per_sec"] > 0


def test_the_kernel_table_reads_a_gpu_trace():
  """A Perfetto trace laid out as jax.profiler writes it on a GPU: kernels on the device's stream threads."""
  trace = {"traceEvents": [
      {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
      {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "pid": 2, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7(Compute)"}},
      {"ph": "M", "pid": 2, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
      {"ph": "X", "pid": 1, "tid": 1, "name": "host work", "ts": 0, "dur": 1000},
      *({"ph": "X", "pid": 2, "tid": 7, "name": "gemm", "ts": i, "dur": 30} for i in range(4)),
      {"ph": "X", "pid": 2, "tid": 7, "name": "softmax", "ts": 9, "dur": 40},
      {"ph": "X", "pid": 2, "tid": 8, "name": "fusion.1", "ts": 0, "dur": 500}]}
  table = trace_table.kernel_table(trace_table.kernel_events(trace), steps=2, top=25)
  assert table["device_ms_per_step"] == 0.08
  assert [(k["name"], k["ms_per_step"], k["calls_per_step"], k["share"]) for k in table["kernels"]] == [
      ("gemm", 0.06, 2.0, 0.75), ("softmax", 0.02, 0.5, 0.25)]
