"""Two JAX processes on localhost: each reads its own half of every global batch, and resumes exactly."""

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from md4_jax.data import pipeline
from tests.conftest import ROOT


@pytest.mark.slow
def test_two_processes_split_each_global_batch_and_resume(tmp_path):
  with socket.socket() as probe:  # a free port on localhost for the coordinator
    probe.bind(("localhost", 0))
    port = probe.getsockname()[1]
  outs = [tmp_path / f"process_{i}.json" for i in range(2)]
  workers = [subprocess.Popen([sys.executable, str(ROOT / "tests/multiprocess_data_worker.py"), str(i), str(port),
                               str(outs[i])], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
  for worker in workers:
    output, _ = worker.communicate(timeout=240)
    assert worker.returncode == 0, output[-3000:]
  results = [json.loads(out.read_text()) for out in outs]
  assert [r["process_index"] for r in results] == [0, 1] and results[0]["process_count"] == 2

  # The single-process run of the same seed: global batch k = rows k*4 .. k*4+3 of the shuffled stream.
  rows = pipeline.StreamRows(np.arange(10 * 4, dtype=np.int32), 4)
  single = iter(pipeline.train_dataset(rows, 4, seed=3).to_iter_dataset())
  for step in range(6):
    expected = sorted((next(single)["tokens"][:, 0] // 4).tolist())
    halves = [r["batches"][step] for r in results]
    assert len(halves[0]) == len(halves[1]) == 2
    assert not set(halves[0]) & set(halves[1])  # each process reads only its own rows
    assert sorted(halves[0] + halves[1]) == expected
  for r in results:
    assert r["after_resume"] == r["batches"][3:]
  first_rows = results[0]["batches"][0] + results[1]["batches"][0]
  assert results[0]["global_shape"] == [4, 4]
  assert results[0]["global_sum"] == results[1]["global_sum"] == sum(sum(range(r * 4, r * 4 + 4)) for r in first_rows)
