"""The training loop: train.steps_per_call (K optimizer steps in one jitted call, a scan over K batches) makes the
same run as one step per call, resumes the same way, and never straddles an evaluation or checkpoint; a NaN loss
or a full disk stops it with one message and loses no checkpointed work."""

import errno
import json
import random
import re
import signal
import subprocess
import sys
import types

import pytest

from md4_jax import errors
from md4_jax.errors import UserError
from md4_jax.run import loop, modes
from md4_jax.run.loop import NonFiniteLoss
from tests.conftest import ROOT, assert_clear_error, launch, launch_tiny, make_config, reference
from tests.test_end_to_end import assert_same_arrays, metric_rows, saved_state, train_until_sigterm_at_step_7


def train_cfg(num_steps, steps_per_call, eval_every, checkpoint_every):
  return types.SimpleNamespace(num_steps=num_steps, steps_per_call=steps_per_call, eval_every=eval_every,
                               checkpoint_every=checkpoint_every)


def calls(cfg, start=0) -> list[int]:
  done, counts = start, []
  while done < cfg.num_steps:
    counts.append(loop.steps_in_call(cfg, done))
    done += counts[-1]
  return counts


def test_calls_of_the_tiny_config():
  # 12 steps, K = 4, evaluations at 6 and 12, checkpoints at 4, 8 and 12: steps 5-8 run one by one (6 would
  # fall inside a call), steps 1-4 and 9-12 in one call each.
  assert calls(train_cfg(12, 4, 6, 4)) == [4, 1, 1, 1, 1, 4]
  assert calls(train_cfg(12, 1, 6, 4)) == [1] * 12


def test_calls_start_at_multiples_and_no_hook_falls_inside_one():
  rng = random.Random(0)
  for _ in range(300):
    cfg = train_cfg(rng.randint(1, 60), rng.randint(1, 9), rng.randint(1, 20), rng.randint(1, 20))
    start = rng.randint(0, cfg.num_steps - 1)
    done = start
    for count in calls(cfg, start):
      assert count in (1, cfg.steps_per_call)
      if count > 1:
        assert done % count == 0
        inside = range(done + 1, done + count)
        assert not any(step % cfg.eval_every == 0 or step % cfg.checkpoint_every == 0 for step in inside)
      done += count
    assert done == cfg.num_steps


@pytest.mark.slow
def test_k_steps_per_call_is_the_one_step_run_and_resumes_the_same(tiny_run, tmp_path, monkeypatch):
  corpus_file, one_by_one, _ = tiny_run  # only read
  real, seen = loop.steps_in_call, []

  def counting(cfg, done):
    seen.append(real(cfg, done))
    return seen[-1]

  monkeypatch.setattr(loop, "steps_in_call", counting)
  chunked, config = tmp_path / "chunked", make_config(corpus_file, train__steps_per_call=4)
  assert train_until_sigterm_at_step_7(config, chunked, monkeypatch) == 128 + signal.SIGTERM
  modes.main(config, chunked, "train", reference=reference())
  assert seen == [4, 1, 1, 1] + [1, 4]  # the scanned program did run, before and after the resume
  assert metric_rows(chunked) == metric_rows(one_by_one)
  for step in (8, 12):
    assert_same_arrays(saved_state(chunked, step), saved_state(one_by_one, step))


def test_steps_per_call_must_be_positive(corpus_file, tmp_path):
  with pytest.raises(UserError, match="train.steps_per_call"):
    modes.main(make_config(corpus_file, train__steps_per_call=0), tmp_path / "run", "train", reference=reference())


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus_file):
  # A learning rate this large overflows the parameters within a few steps.
  config = make_config(corpus_file, train__learning_rate=1e30, train__warmup_steps=0, train__grad_clip=1e30,
                       train__checkpoint_every=1, train__num_steps=50)
  with pytest.raises(NonFiniteLoss, match=r"at step (\d+).*last good checkpoint \(step (\d+) in") as error:
    modes.main(config, tmp_path / "run", reference=reference())

  bad_step, good_step = map(int, re.search(r"at step (\d+).*step (\d+) in", str(error.value)).groups())
  assert good_step == bad_step - 1
  steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[-1] == good_step


@pytest.mark.slow
def test_nan_loss_from_the_command_line_is_one_message(tmp_path, corpus_file):
  result = launch_tiny(corpus_file, tmp_path / "run", "--config.train.learning_rate=1e30",
                       "--config.train.grad_clip=1e30", "--config.train.warmup_steps=0", "--config.train.num_steps=50")
  assert_clear_error(result, "training stopped")
  assert result.returncode == 2


# Runs launch.py with the disk "filling up" at the metrics line of step 10: half the line is written,
# then the write fails with ENOSPC, as a real full disk does.
_FULL_DISK_AT_STEP_10 = """
import errno, runpy, sys
from md4_jax.engine import metrics_log as metrics_logging
write = metrics_logging.MetricsLog.write
def write_until_full(self, step, metrics):
  if step >= 10:
    with self.path.open("a") as file:
      file.write('{"step": %d, "train/lo' % step)
    raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
  write(self, step, metrics)
metrics_logging.MetricsLog.write = write_until_full
sys.argv = ["launch.py"] + sys.argv[1:]
runpy.run_path("launch.py", run_name="__main__")
"""


@pytest.mark.slow
def test_full_disk_is_one_message_and_the_run_resumes(tmp_path, corpus_file):
  workdir = tmp_path / "run"
  args = ["--config", ROOT / "tests/tiny_config.py", "--workdir", workdir, f"--config.data.path={corpus_file}"]
  full = subprocess.run([sys.executable, "-c", _FULL_DISK_AT_STEP_10, *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert_clear_error(full, "error: the disk is full", "No space left on device", "run the same command again")
  assert full.returncode == 2
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8]
  resumed = launch(*args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from step 8" in resumed.stderr + resumed.stdout
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps == sorted(steps) and steps[-1] == 12  # the torn step-10 line is gone; 10 and 12 were rewritten


def test_disk_full_is_found_through_wrapping_errors():
  try:
    try:
      raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as cause:
      raise ValueError("checkpoint save failed") from cause
  except ValueError as wrapped:
    assert errors.disk_full(wrapped)
  assert errors.disk_full(RuntimeError("tensorstore: write failed: No space left on device"))
  assert not errors.disk_full(OSError(errno.EACCES, "Permission denied"))
