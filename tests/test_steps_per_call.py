"""train.steps_per_call: K optimizer steps in one jitted call (a scan over K batches) make the same run as one
step per call, resume the same way, and never straddle an evaluation or checkpoint."""

import random
import signal
import types

import pytest

from md4_jax.errors import UserError
from md4_jax.run import loop, modes
from tests.conftest import make_config, reference
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


def test_k_steps_per_call_is_the_one_step_run_and_resumes_the_same(corpus_file, tmp_path, monkeypatch):
  one_by_one = tmp_path / "one"
  modes.main(make_config(corpus_file), one_by_one, "train", reference=reference())
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
