"""No failure loses work: damaged checkpoints, two trainers, unusable workdirs, recovery from NaN, moved data."""

import fcntl
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4_jax.engine import checkpoints, experiment
from md4_jax.errors import UserError
from md4_jax.run import modes
from md4_jax.run.loop import NonFiniteLoss
from tests.conftest import CORPUS, ROOT, assert_clear_error, launch_tiny, make_config, reference, train_tiny
from tests.test_end_to_end import metric_rows

pytestmark = pytest.mark.slow  # whole runs: the full suite only (README)

STEPS = {"--config.train.num_steps": 8, "--config.train.checkpoint_every": 2, "--config.train.eval_every": 4}


def tiny_args(**changes):
  return [f"{key}={value}" for key, value in {**STEPS, **changes}.items()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(corpus, workdir): 8 steps with checkpoints at 4, 6, 8 (keep 3)."""
  corpus, workdir, _ = train_tiny(tmp_path_factory.mktemp("trained"), train__num_steps=8,
                                  train__checkpoint_every=2, train__eval_every=4)
  return corpus, workdir


def copy_of(trained, tmp_path):
  shutil.copytree(trained[1], tmp_path / "run")
  return tmp_path / "run"


def largest_array_file(checkpoint):
  return max((p for p in (checkpoint / "state").rglob("*") if p.is_file() and "/d/" in str(p)),
             key=lambda p: p.stat().st_size)


def damage(checkpoint, how):
  if how == "truncated":
    path = largest_array_file(checkpoint)
    path.write_bytes(path.read_bytes()[:10])
  elif how == "missing file":
    largest_array_file(checkpoint).unlink()
  elif how == "bad metadata":
    (checkpoint / "state" / "_METADATA").write_text("{not json")
  elif how == "flipped bit":  # reads back without an error: only the saved checksum tells
    path = largest_array_file(checkpoint)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "flipped bit"])
def test_training_resumes_from_the_newest_intact_checkpoint(trained, tmp_path, how):
  workdir = copy_of(trained, tmp_path)
  damage(workdir / "checkpoints" / "8", how)
  stale = workdir / "checkpoints" / "7.orbax-checkpoint-tmp-1764633600"  # what a kill mid-save leaves
  stale.mkdir()
  (stale / "junk").write_text("half a checkpoint")
  result = launch_tiny(trained[0], workdir, *tiny_args())
  assert result.returncode == 0, result.stderr[-3000:]
  output = result.stdout + result.stderr
  assert f"checkpoint {workdir}/checkpoints/8 is damaged" in output and "moved it to 8.damaged" in output
  assert "resuming from step 6" in output
  assert (workdir / "checkpoints" / "8.damaged").is_dir()  # kept for inspection, never deleted
  assert not stale.exists()
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4", "6", "8", "8.damaged"]
  assert metric_rows(workdir) == metric_rows(trained[1])  # steps 7 and 8 recomputed from 6: the same numbers


def test_eval_skips_a_damaged_latest_and_step_names_the_others(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  damage(workdir / "checkpoints" / "8", "bad metadata")
  result = launch_tiny(trained[0], workdir, "--mode=eval", "--step=8", *tiny_args())
  assert_clear_error(result, "checkpoints/8 cannot be restored", "[4, 6]")
  assert (workdir / "checkpoints" / "8").is_dir()  # --step names one: nothing is moved
  result = launch_tiny(trained[0], workdir, "--mode=eval", *tiny_args())
  assert result.returncode == 0, result.stderr[-3000:]
  assert "moved it to 8.damaged" in result.stdout + result.stderr
  assert (workdir / "eval" / "step_6.json").is_file()


@pytest.mark.parametrize("how", ["missing file", "bad metadata"])
def test_restore_falls_back_in_process_and_moves_nothing_when_none_restores(trained, tmp_path, how):
  corpus, _ = trained
  workdir = copy_of(trained, tmp_path)
  damage(workdir / "checkpoints" / "8", how)
  config = make_config(corpus, train__num_steps=8, train__checkpoint_every=2, train__eval_every=4)
  assert modes.main(config, workdir, "sample", reference=reference())["tokens"].shape[0] == 2
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4", "6", "8.damaged"]
  for step in (4, 6):
    damage(workdir / "checkpoints" / str(step), how)
  with pytest.raises(UserError, match=r"no checkpoint in .* can be restored \(steps \[4, 6\].*nothing was moved"):
    modes.main(config, workdir, "sample", reference=reference())
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4", "6", "8.damaged"]
  # The way forward the error names: move the directory aside, and the same command trains from step 0.
  checkpoints = workdir / "checkpoints"
  with pytest.raises(UserError, match=f"restore the directory from a copy.*mv {checkpoints} {checkpoints}.damaged"):
    modes.main(config, workdir, "train", reference=reference())
  checkpoints.rename(workdir / "checkpoints.damaged")
  assert np.isfinite(modes.main(config, workdir, "train", reference=reference())["eval/bpt"])
  assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [4, 6, 8]


def test_state_summary_finite_and_checksum():
  state = {"step": jnp.int32(3), "params": {"w": jnp.ones((4, 3)), "b": jnp.zeros(3, jnp.bfloat16)},
           "opt_state": (jnp.full((2,), 0.5),)}
  summary = jax.jit(checkpoints.state_summary)(state)
  assert bool(summary["finite"])
  # The checksum is the uint32 sum of all bits: 3 + 12 * bits(1.0) + 0 + 2 * bits(0.5), mod 2^32.
  expected = (3 + 12 * 0x3F800000 + 2 * 0x3F000000) % 2**32
  assert int(summary["checksum"]) == expected
  flipped = jax.tree.map(lambda x: x, state)
  flipped["params"]["b"] = flipped["params"]["b"].at[1].set(jnp.bfloat16(2.0 ** -133))  # one low bit set
  assert int(jax.jit(checkpoints.state_summary)(flipped)["checksum"]) == expected + 1
  state["opt_state"] = (jnp.array([0.5, jnp.inf]),)
  assert not bool(jax.jit(checkpoints.state_summary)(state)["finite"])


def test_a_checkpoint_with_non_finite_state_is_never_saved(tmp_path, corpus_file, monkeypatch):
  original = experiment.Experiment.__init__

  def with_bad_state_at_step_4(self, *args, **kwargs):
    original(self, *args, **kwargs)
    summary = self.state_summary
    self.state_summary = lambda state: {**summary(state), "finite": state["step"] != 4}

  monkeypatch.setattr(experiment.Experiment, "__init__", with_bad_state_at_step_4)
  config = make_config(corpus_file, train__checkpoint_every=2, train__num_steps=8)
  with pytest.raises(NonFiniteLoss, match=r"parameters or optimizer state hold NaN or Inf at step 4.*"
                                          r"last good checkpoint \(step 2 in"):
    modes.main(config, tmp_path / "run", reference=reference())
  assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["2"]


def test_a_second_trainer_is_refused_and_a_dead_ones_lock_is_free(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  assert (workdir / "train.lock").is_file()  # left by the finished run: it binds nothing
  first = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "tests/tiny_config.py"),
                            "--workdir", str(workdir), f"--config.data.path={trained[0]}",
                            *tiny_args(**{"--config.train.num_steps": 100000})],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 120
    while str(first.pid) not in (workdir / "train.lock").read_text():
      assert first.poll() is None and time.time() < deadline
      time.sleep(0.2)
    result = launch_tiny(trained[0], workdir, *tiny_args(**{"--config.train.num_steps": 100000}))
    assert_clear_error(result, f"is being trained by another process (pid {first.pid} on", "another --workdir")
  finally:
    first.send_signal(signal.SIGKILL)  # a kill leaves the file, but not the lock
    first.wait()
  with open(workdir / "train.lock", "a+") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise BlockingIOError if stuck


@pytest.mark.parametrize("mode", ["train", "eval", "sample"])
def test_a_workdir_that_is_a_file_is_refused_in_every_mode(tmp_path, corpus_file, mode):
  (tmp_path / "file").write_text("not a directory")
  result = launch_tiny(corpus_file, tmp_path / "file", f"--mode={mode}")
  assert_clear_error(result, f"--workdir {tmp_path / 'file'} is a file")


@pytest.mark.parametrize("mode", ["train", "eval", "sample"])
def test_an_unwritable_workdir_is_refused_before_any_work(trained, tmp_path, monkeypatch, mode):
  workdir = copy_of(trained, tmp_path)

  def read_only(*args, **kwargs):
    raise OSError(30, "Read-only file system")  # EROFS: what a read-only mount answers, even to root

  monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
  monkeypatch.setattr(modes, "Experiment", None)  # no work may start: building the model would fail here
  with pytest.raises(UserError, match=f"--workdir {workdir} cannot be written \\(Read-only file system\\)"):
    modes.main(make_config(trained[0]), workdir, mode, reference=reference())


def test_resuming_may_change_the_recovery_keys_and_config_json_keeps_the_history(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  result = launch_tiny(trained[0], workdir, *tiny_args(**{"--config.train.num_steps": 10,
                                                         "--config.train.learning_rate": 0.005}))
  assert result.returncode == 0, result.stderr[-3000:]
  assert ("this run now differs from its original config: train.learning_rate 0.01 -> 0.005, from the checkpoint "
          "at step 8 on") in result.stdout
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["train"]["learning_rate"] == 0.005
  assert saved["_run"]["recovery"] == [{"from_step": 8, "changes": {"train.learning_rate": [0.01, 0.005]}}]
  # Steps 9 and 10 (state steps 8 and 9) follow the new peak's schedule; the log line is their mean.
  schedule = experiment.learning_rate_schedule(make_config(trained[0], train__num_steps=10, train__learning_rate=0.005).train)
  logged = [row["train/learning_rate"] for row in metric_rows(workdir) if row["step"] == 10 and "train/loss" in row]
  np.testing.assert_allclose(logged, [(schedule(8) + schedule(9)) / 2], rtol=1e-6)
  result = launch_tiny(trained[0], workdir, *tiny_args(**{"--config.train.num_steps": 12, "--config.train.grad_clip": 0.5,
                                                         "--config.train.learning_rate": 0.005}))
  assert result.returncode == 0, result.stderr[-3000:]
  history = json.loads((workdir / "config.json").read_text())["_run"]["recovery"]
  assert history[1] == {"from_step": 10, "changes": {"train.grad_clip": [1.0, 0.5]}}


def test_a_start_that_failed_before_any_checkpoint_binds_nothing(tmp_path, corpus_file):
  workdir = tmp_path / "run"
  result = launch_tiny(corpus_file, workdir, "--config.train.learning_rate=1e30", "--config.train.grad_clip=0",
                       "--config.train.warmup_steps=0", "--config.train.num_steps=50")
  assert_clear_error(result, "No checkpoint was saved yet")
  assert not (workdir / "checkpoints").exists() or not any((workdir / "checkpoints").iterdir())
  other_corpus = tmp_path / "other.txt"
  other_corpus.write_text(CORPUS.replace("fox", "cow"))
  result = launch_tiny(other_corpus, workdir, "--config.train.num_steps=4")  # the fix: other data, default rate
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((workdir / "config.json").read_text())["data"]["path"] == str(other_corpus)


def test_eval_accepts_the_same_data_at_a_new_path_and_sampling_needs_none(trained, tmp_path):
  corpus, _ = trained
  workdir = copy_of(trained, tmp_path)
  moved = tmp_path / "moved.txt"
  shutil.copy(corpus, moved)
  assert modes.main(make_config(moved), workdir, "eval", reference=reference())["eval/bpt"] > 0
  different = tmp_path / "different.txt"
  different.write_text(CORPUS.replace("cat", "dog"))
  with pytest.raises(UserError, match=r"is not the file this run was trained on .*SHA-256"):
    modes.main(make_config(different), workdir, "eval", reference=reference())
  gone = make_config(tmp_path / "gone.txt")
  with pytest.raises(UserError, match=r"data.path='.*gone.txt' is not a file; this run was trained on"):
    modes.main(gone, workdir, "eval", reference=reference())
  assert len(modes.main(gone, workdir, "sample", reference=reference())["samples"]) == 2  # reads the tokenizer only


def test_a_workdir_from_before_mlp_hidden_and_cond_dim_restores(trained, tmp_path):
  """Its config.json lacks model.transformer.mlp_hidden and model.transformer.cond_dim: they count as 0, the layout it was trained with."""
  workdir = copy_of(trained, tmp_path)
  saved = json.loads((workdir / "config.json").read_text())
  for key in ("mlp_hidden", "cond_dim"):
    del saved["model"]["transformer"][key]
  (workdir / "config.json").write_text(json.dumps(saved))
  result = launch_tiny(trained[0], workdir, "--mode=eval", *tiny_args())
  assert result.returncode == 0, result.stderr[-3000:]
  result = launch_tiny(trained[0], workdir, *tiny_args(**{"--config.train.num_steps": 10}))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resuming from step 8" in result.stdout
  result = launch_tiny(trained[0], workdir, "--config.model.transformer.cond_dim=16", *tiny_args())
  assert_clear_error(result, "model.transformer.cond_dim: 0 in the workdir, 16 now")


@pytest.mark.parametrize("at", [8, 4])
def test_a_kill_between_a_checkpoint_and_its_evaluation_loses_no_metrics(trained, tmp_path, at):
  """The checkpoint of an evaluation step is written first; a run killed before the evaluation's line is written
  evaluates that step when it resumes, so its metrics end equal to the uninterrupted run's (issue 32's fault
  injection found the final evaluation missing)."""
  workdir = copy_of(trained, tmp_path)
  for step in range(at + 2, 9, 2):
    shutil.rmtree(workdir / "checkpoints" / str(step))
  rows = [row for row in metric_rows(trained[1]) if row["step"] < at or (row["step"] == at and "eval/bpt" not in row)]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
  result = launch_tiny(trained[0], workdir, *tiny_args())
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"step {at}: held-out bound" in result.stdout
  assert metric_rows(workdir) == metric_rows(trained[1])
