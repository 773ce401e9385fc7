"""Bad inputs end in one clear message (exit status 2 or a flags error), never a traceback."""

import errno
import json
import re
import subprocess
import sys

import ml_collections
import pytest

from md4_jax import errors
from md4_jax.errors import UserError
from md4_jax.run import modes
from md4_jax.run.loop import NonFiniteLoss
from tests.conftest import ROOT, launch, launch_tiny, make_config, reference


def assert_clear_error(result, *fragments):
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in result.stderr, result.stderr[-3000:]


def test_unknown_key_on_the_command_line(tmp_path, corpus_file):
  assert_clear_error(launch_tiny(corpus_file, tmp_path, "--config.model.widht=64"), "unknown config key", "widht")


def test_wrong_type_on_the_command_line(tmp_path, corpus_file):
  assert_clear_error(launch_tiny(corpus_file, tmp_path, "--config.train.num_steps=lots"), "num_steps")


def test_bad_schedule_name(tmp_path, corpus_file):
  result = launch_tiny(corpus_file, tmp_path, "--config.diffusion.schedule=quadratic")
  assert_clear_error(result, "unknown masking schedule 'quadratic'", "poly2")
  assert result.returncode == 2


@pytest.mark.parametrize("content, message", [(None, "does not exist"), ("", "is empty")])
def test_missing_or_empty_text_file(tmp_path, content, message):
  path = tmp_path / "corpus.txt"
  if content is not None:
    path.write_text(content)
  assert_clear_error(launch_tiny(path, tmp_path / "run"), message)


def test_unknown_key_or_wrong_type_in_a_config_file(corpus_file, tmp_path):
  config = make_config(corpus_file)
  config.model.dropout = 0.1
  with pytest.raises(UserError, match="unknown config key 'model.dropout'.*model.width"):
    modes.main(config, tmp_path, reference=reference())
  values = make_config(corpus_file).to_dict()
  values["train"]["num_steps"] = 10.5  # a config built without configs/base.py's typed defaults
  config = ml_collections.ConfigDict(values)
  with pytest.raises(UserError, match="'train.num_steps' = 10.5 is a float; it must be a int"):
    modes.main(config, tmp_path, reference=reference())


def test_type_error_inside_a_config_file(tmp_path, corpus_file):
  config_file = tmp_path / "my_config.py"
  config_file.write_text("from tests import tiny_config\n\n\ndef get_config():\n"
                         "  config = tiny_config.get_config()\n  config.train.num_steps = 10.5\n  return config\n")
  result = launch("--config", config_file, "--workdir", tmp_path / "run", f"--config.data.path={corpus_file}")
  assert_clear_error(result, "error in the config file", "num_steps")
  assert result.returncode == 2


@pytest.mark.parametrize("key, value, message", [
    ("train__batch_size", 0, "must be positive"),
    ("diffusion__timesteps", -1, "diffusion.timesteps"),
    ("model__num_heads", 5, "num_heads"),
    ("sampler__grid", "log", "unknown time grid"),
    ("sampler__name", "gibbs", "sampler.name.*choose one of"),
    ("sampler__inner", "semi_ar", "sampler.inner.*choose one of"),
    ("sampler__top_p", 0.0, "top_p"),
    ("sampler__temperature", -1.0, "temperature"),
    ("sampler__tokens_per_call", 0, "tokens_per_call"),
    ("sampler__params", "best", "sampler.params"),
    ("train__ema_decay", 1.0, "ema_decay"),
    ("train__learning_rate", -1e-3, "learning_rate=-0.001 must be > 0"),
    ("train__warmup_steps", -1, "warmup_steps=-1 must be >= 0"),
    ("train__weight_decay", -0.1, "weight_decay"),
    ("train__b1", 1.0, "b1=1.0 must be in"),
    ("train__b2", -0.1, "b2=-0.1 must be in"),
    ("train__grad_clip", -1.0, "grad_clip=-1.0 must be >= 0.*0 = no clipping"),
    ("diffusion__genmd4__network_draws", 3, "network_draws=3: choose 1 or 2"),
    ("diffusion__genmd4__t_min", 1.0, "t_min"),
    ("diffusion__genmd4__initial_power", 0.0, "initial_power"),
    ("diffusion__genmd4__learning_rate", -0.5, "genmd4.learning_rate"),
])
def test_bad_values_fail_before_any_work(corpus_file, tmp_path, key, value, message):
  with pytest.raises(UserError, match=message):
    modes.main(make_config(corpus_file, **{key: value}), tmp_path / "run", reference=reference())
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, message", [
    (dict(sampler__name="semi_ar", sampler__block_length=5), "block_length=5 must divide the sequence length 16"),
    (dict(sampler__name="semi_ar", sampler__block_length=4, sampler__steps=6), "multiple of the 4 semi_ar blocks"),
])
def test_bad_semi_ar_blocks(corpus_file, tmp_path, overrides, message):
  with pytest.raises(UserError, match=message):
    modes.main(make_config(corpus_file, **overrides), tmp_path / "run", reference=reference())


def test_shorthand_config_flags(tmp_path, corpus_file):
  result = launch_tiny(corpus_file, tmp_path / "run", "--sampler.nme=exact")
  assert_clear_error(result, "unknown config key 'sampler.nme'", "sampler.name")


def test_incompatible_workdir_is_refused(tmp_path, corpus_file):
  workdir = tmp_path / "run"
  workdir.mkdir()
  saved = make_config(corpus_file).to_dict()
  saved["model"]["width"] = 64
  (workdir / "config.json").write_text(json.dumps(saved))
  (workdir / "checkpoints" / "4").mkdir(parents=True)  # a checkpoint binds the workdir to its config
  result = launch_tiny(corpus_file, workdir)
  assert_clear_error(result, "model.width: 64 in the workdir, 32 now", "new --workdir")
  assert json.loads((workdir / "config.json").read_text()) == saved  # nothing overwritten


def test_the_renamed_model_kind_key_is_refused_with_its_replacement(tmp_path, corpus_file):
  result = launch_tiny(corpus_file, tmp_path / "run", "--model.kind=ar")
  assert_clear_error(result, "'model.kind' was replaced by 'objective'", "--config.objective=ar")
  assert result.returncode == 2
  config = make_config(corpus_file).to_dict()
  config["model"]["kind"] = "ar"  # a config file that still sets it
  with pytest.raises(UserError, match="'model.kind' was replaced by 'objective'"):
    modes.main(ml_collections.ConfigDict(config), tmp_path / "run2", "train", reference=reference())


def test_a_workdir_saved_with_model_kind_still_resumes(tmp_path, corpus_file):
  """Runs from before the objective key hold model.kind in config.json: read as `objective`."""
  workdir = tmp_path / "run"
  modes.main(make_config(corpus_file, objective="ar", train__num_steps=4), workdir, "train", reference=reference())
  saved = json.loads((workdir / "config.json").read_text())
  saved["model"]["kind"] = saved.pop("objective")
  (workdir / "config.json").write_text(json.dumps(saved))
  (workdir / "modality.json").unlink()  # nor did they write modality.json: tokenizer.json says what a token is
  evaluated = modes.main(make_config(corpus_file, objective="ar", train__num_steps=4), workdir, "eval",
                       reference=reference())
  assert evaluated["eval/bpt"] > 0
  result = modes.main(make_config(corpus_file, objective="ar", train__num_steps=6), workdir, "train",
                    reference=reference())
  assert "eval/bpt" in result
  with pytest.raises(UserError, match="objective: 'ar' in the workdir, 'md4' now"):
    modes.main(make_config(corpus_file, train__num_steps=8), workdir, "train", reference=reference())


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


def test_nan_loss_from_the_command_line_is_one_message(tmp_path, corpus_file):
  result = launch_tiny(corpus_file, tmp_path / "run", "--config.train.learning_rate=1e30",
                       "--config.train.grad_clip=1e30", "--config.train.warmup_steps=0", "--config.train.num_steps=50")
  assert_clear_error(result, "training stopped")
  assert result.returncode == 2




# Runs launch.py with the disk "filling up" at the metrics line of step 10: half the line is written,
# then the write fails with ENOSPC, as a real full disk does.
_FULL_DISK_AT_STEP_10 = """
import errno, runpy, sys
from md4_jax import logging as metrics_logging
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


def test_partial_multihost_flags(tmp_path, corpus_file):
  assert_clear_error(launch_tiny(corpus_file, tmp_path, "--num_processes=2"), "multi-host needs all of",
                     "--coordinator_address=HOST:PORT")
  assert_clear_error(launch_tiny(corpus_file, tmp_path, "--coordinator_address=localhost:1", "--num_processes=2",
                                 "--process_id=2"), "--process_id=2 must be in [0, 2)")


def test_optimizer_mistakes_and_a_step_in_train_mode_are_one_line_through_the_command(tmp_path, corpus_file):
  result = launch_tiny(corpus_file, tmp_path / "run", "--config.train.learning_rate=-0.01")
  assert_clear_error(result, "train.learning_rate=-0.01 must be > 0")
  assert not (tmp_path / "run").exists()
  result = launch_tiny(corpus_file, tmp_path / "run", "--step=4")
  assert_clear_error(result, "--step=4 applies to --mode eval and --mode sample", "move the later")
  assert not (tmp_path / "run").exists()
