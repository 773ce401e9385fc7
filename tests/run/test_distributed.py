"""Multi-host (2 local processes x 4 CPU devices, jax.distributed on localhost) and checkpoints across meshes.

Every run is the tiny config on the same corpus; they must all log the losses of one process
on one device (float32, relative difference < 1e-5), whatever the mesh, process count or
restore path.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import CORPUS, ROOT

pytestmark = pytest.mark.slow  # whole runs: the full suite only (README)

TINY = ROOT / "tests/tiny_config.py"
LOG_STEPS = [2, 4, 6, 8, 10, 12]


def command(corpus, workdir, *args):
  return [sys.executable, str(ROOT / "launch.py"), "--config", str(TINY), "--workdir", str(workdir),
          f"--config.data.path={corpus}", *map(str, args)]


def environment(devices: int) -> dict:
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  env.pop("XLA_FLAGS", None)
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def run_one(corpus, workdir, *args, devices=1) -> str:
  done = subprocess.run(command(corpus, workdir, *args), cwd=ROOT, env=environment(devices), capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


def run_two_processes(corpus, workdir, *args) -> list[str]:
  with socket.socket() as probe:  # a free localhost port for the coordinator
    probe.bind(("localhost", 0))
    port = probe.getsockname()[1]
  workers = [subprocess.Popen(command(corpus, workdir, *args, f"--coordinator_address=localhost:{port}",
                                      "--num_processes=2", f"--process_id={i}"),
                              cwd=ROOT, env=environment(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
  outputs = []
  for worker in workers:
    stdout, stderr = worker.communicate(timeout=400)
    assert worker.returncode == 0, stderr[-3000:]
    outputs.append(stdout + stderr)
  return outputs


def logged(workdir, key):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {row["step"]: row[key] for row in rows if key in row}


def assert_close(values, reference):
  assert sorted(values) == sorted(reference)
  for step, value in values.items():
    assert abs(value - reference[step]) <= 1e-5 * abs(reference[step]), (step, value, reference[step])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Every run trains to step 8, then resumes to 12 (the learning-rate schedule follows num_steps, so all
  runs stop and resume at the same step)."""
  root = tmp_path_factory.mktemp("multihost")
  corpus = root / "corpus.txt"
  corpus.write_text(CORPUS)
  paths = {name: root / name for name in ("one_device", "two_hosts", "eight_to_one", "one_to_eight")}
  run_one(corpus, paths["one_device"], "--config.train.num_steps=8")
  shutil.copytree(paths["one_device"], paths["one_to_eight"])
  run_one(corpus, paths["one_device"])  # the reference
  run_one(corpus, paths["one_to_eight"], devices=8)
  first = run_two_processes(corpus, paths["two_hosts"], "--config.train.num_steps=8")
  shutil.copytree(paths["two_hosts"], paths["eight_to_one"])
  second = run_two_processes(corpus, paths["two_hosts"])  # both processes restore checkpoint 8
  run_one(corpus, paths["eight_to_one"])
  return corpus, paths, first, second


def test_two_processes_log_one_devices_losses_across_a_resume(runs):
  _, paths, _, _ = runs
  reference = logged(paths["one_device"], "train/loss")
  assert sorted(reference) == LOG_STEPS
  assert_close(logged(paths["two_hosts"], "train/loss"), reference)
  assert_close(logged(paths["two_hosts"], "eval/bpt"), logged(paths["one_device"], "eval/bpt"))


def test_only_process_0_writes(runs):
  _, paths, first, second = runs
  rows = [json.loads(line) for line in (paths["two_hosts"] / "metrics.jsonl").read_text().splitlines()]
  kinds = [(row["step"], "eval/bpt" in row) for row in rows]
  # One train line per log step and one eval line at 6, 8 (the first leg's end) and 12; no copies.
  assert sorted(kinds) == sorted([(step, False) for step in LOG_STEPS] + [(6, True), (8, True), (12, True)])
  for output in (first, second):
    assert "held-out bound" in output[0] and "held-out bound" not in output[1]
  assert sorted(p.name for p in (paths["two_hosts"] / "samples").iterdir()) == sorted(
      f"step_{step}.{suffix}" for step in (6, 8, 12) for suffix in ("txt", "jsonl"))
  assert "resuming from step 8" in second[0]  # restored (by both processes: both exited 0 with step 12 done)


def test_checkpoints_move_between_one_and_eight_devices_for_training(runs):
  _, paths, _, _ = runs
  reference = logged(paths["one_device"], "train/loss")
  assert_close(logged(paths["eight_to_one"], "train/loss"), reference)  # 2 processes x 4 devices -> 1 device
  assert_close(logged(paths["one_to_eight"], "train/loss"), reference)  # 1 device -> 8 devices


def test_eval_and_sample_on_another_mesh(runs, tmp_path):
  corpus, paths, _, _ = runs
  reference_bpt = logged(paths["one_device"], "eval/bpt")[12]
  # The 2-process (8-device) checkpoint on one device, the one-device checkpoint on 8 devices.
  for workdir, devices in ((paths["two_hosts"], 1), (paths["one_device"], 8)):
    run_one(corpus, workdir, "--mode", "eval", devices=devices)
    result = json.loads((workdir / "eval" / "step_12.json").read_text())
    assert abs(result["eval/bpt"] - reference_bpt) <= 1e-5 * reference_bpt
    printed = run_one(corpus, workdir, "--mode", "sample", "--num_samples", "2", devices=devices)
    assert "=== sample 1 ===" in printed and (workdir / "samples" / "step_12_ancestral.txt").exists()


def test_sigterm_to_one_process_stops_both_at_one_step(tmp_path):
  """A preemption notice reaching one process only: both save the same checkpoint and exit 143."""
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(CORPUS)
  workdir = tmp_path / "run"
  with socket.socket() as probe:
    probe.bind(("localhost", 0))
    port = probe.getsockname()[1]
  long_run = ("--config.train.num_steps=100000", "--config.train.checkpoint_every=100000",
              "--config.train.eval_every=100000")
  workers = [subprocess.Popen(command(corpus, workdir, *long_run, f"--coordinator_address=localhost:{port}",
                                      "--num_processes=2", f"--process_id={i}"),
                              cwd=ROOT, env=environment(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
  metrics = workdir / "metrics.jsonl"
  deadline = time.monotonic() + 240
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
    assert time.monotonic() < deadline and all(w.poll() is None for w in workers), "training did not start"
    time.sleep(0.5)
  workers[1].send_signal(signal.SIGTERM)
  outputs = [worker.communicate(timeout=120) for worker in workers]
  assert [worker.returncode for worker in workers] == [143, 143], [err[-2000:] for _, err in outputs]
  saved = re.search(r"SIGTERM: saved checkpoint (\d+)", outputs[0][0])
  assert saved, outputs[0][0][-2000:]
  step = int(saved.group(1))
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [step]
  # The checkpoint is whole: both processes restore it and train on.
  run_two_processes(corpus, workdir, f"--config.train.num_steps={step + 2}", "--config.train.log_every=1",
                    *long_run[1:])
  assert max(logged(workdir, "train/loss")) == step + 2


def test_two_processes_skip_a_damaged_latest_checkpoint_together(runs, tmp_path):
  """Both processes fail to read checkpoint 12, process 0 moves it aside, both resume from 8 and redo 9-12."""
  corpus, paths, _, _ = runs
  workdir = tmp_path / "run"
  shutil.copytree(paths["two_hosts"], workdir)
  (workdir / "checkpoints" / "12" / "state" / "_METADATA").write_text("{not json")
  outputs = run_two_processes(corpus, workdir)
  assert "moved it to 12.damaged" in outputs[0] and "resuming from step 8" in outputs[0]
  assert (workdir / "checkpoints" / "12.damaged").is_dir() and (workdir / "checkpoints" / "12").is_dir()
  assert_close(logged(workdir, "train/loss"), logged(paths["one_device"], "train/loss"))
