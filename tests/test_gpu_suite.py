"""benchmarks/gpu_suite.sh runs end to end (on the CPU, with --smoke shapes): the script a lent GPU gets must
not be its first run. Its numbers on a CPU mean nothing; its lines and fields are checked."""

import json
import subprocess

from tests.conftest import ROOT


def test_the_gpu_suite_runs_and_writes_one_json_line_per_measurement(tmp_path):
  done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_suite.sh"), str(tmp_path), "--smoke", "--steps", "1",
                         "--only", "owt_small_train,owt_small_sample"], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stdout[-2000:] + (tmp_path / "gpu_suite.stderr").read_text()[-3000:]
  assert "passed" in (tmp_path / "attention_test.txt").read_text()
  lines = [json.loads(line) for line in (tmp_path / "gpu_suite.jsonl").read_text().splitlines()]
  assert [line["measurement"] for line in lines] == ["device", "owt_small_train", "owt_small_sample",
                                                     "owt_small_sample", "device", "owt_small_train"]
  train, train_default_malloc = lines[1], lines[5]
  assert train["fits"] and train["tokens_per_sec"] > 0 and train["dtype"] == "bfloat16"
  assert train["mfu"] is None  # no published peak for a CPU
  assert [line["sampler"] for line in lines[2:4]] == ["exact:1", "ancestral:4"]
  assert all(line["tokens_per_sec"] > 0 for line in lines[2:4])
  # The allocator check: the same step, once with the tunable launch.py sets and once without.
  assert train["huge_pages"] and not train_default_malloc["huge_pages"]
  assert train_default_malloc["fits"] and train_default_malloc["tokens_per_sec"] > 0
