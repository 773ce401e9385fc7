"""`launch.py --help` and `--help=GROUP`: exit status 0, no heavy import, every flag and config key with its default
and comment (md4_jax/run/command_line.py, config_keys.py)."""

import subprocess
import sys

import pytest

from configs import base
from md4_jax.run import command_line, conditioning, config_check, config_keys, modes
from tests.conftest import ROOT


def run_launch(*args, importtime: bool = False) -> subprocess.CompletedProcess:
  flags = ["-X", "importtime"] if importtime else []
  return subprocess.run([sys.executable, *flags, str(ROOT / "launch.py"), *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def imported_modules(importtime_stderr: str) -> set[str]:
  return {line.rsplit("|", 1)[-1].strip() for line in importtime_stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("flag", ["--help", "-h", "--helpfull"])
def test_help_exits_zero_without_importing_jax_or_restarting(flag):
  result = run_launch(flag, importtime=True)
  assert result.returncode == 0, result.stderr[-3000:]
  modules = imported_modules(result.stderr)
  assert "ml_collections" in modules and not {"jax", "flax", "numpy", "md4_jax.run.modes"} & modules
  assert result.stderr.count("| site\n") == 1  # one interpreter: the allocator's restart was not reached
  for flag_name in ("--config", "--workdir", "--mode", "--num_samples", "--prompt", "--length", "--sweep"):
    assert f"  {flag_name}: " in result.stdout
  for group in ("data", "model", "diffusion", "train", "eval", "sampler", "mesh"):
    assert f"  {group} " in result.stdout
  assert "--help=GROUP" in result.stdout


def test_help_for_a_group_lists_each_key_with_its_default_and_comment():
  result = run_launch("--help=train")
  assert result.returncode == 0, result.stderr
  defaults = config_check.flatten(base.get_config())
  train_keys = [key for key in config_keys.read(base.__file__) if key.name.startswith("train.")]
  assert len(train_keys) == len([key for key in defaults if key.startswith("train.")])
  lines = result.stdout.splitlines()
  for key in train_keys:
    index = lines.index(f"{key.name} = {defaults[key.name]!r}")
    assert lines[index + 1].strip() == key.comment
  assert "model.transformer.width" not in result.stdout
  assert "On the CPU each jitted call" in result.stdout  # the comment lines above a key come with it


def test_help_with_a_config_file_shows_its_values_beside_the_defaults():
  result = run_launch("--help", "train", "--config", ROOT / "configs/quickstart.py")
  assert result.returncode == 0, result.stderr
  assert "train.num_steps = 700 (default 2000)" in result.stdout
  assert "train.batch_size = 32\n" in result.stdout


def test_help_for_every_key_and_for_an_unknown_group():
  result = run_launch("--help=all")
  assert result.returncode == 0
  for key in config_check.flatten(base.get_config()):
    assert f"\n{key} = " in result.stdout, key
  result = run_launch("--help=modle")
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr.strip().startswith("error: no config key or group 'modle'; groups: data, diffusion")


def test_the_names_repeated_for_a_fast_help_agree_with_their_owners():
  assert command_line.MODES == tuple(modes.MODES)
  assert command_line.GAP_CHAR == conditioning.GAP_CHAR
  assert command_line.COMPLETION_REGIONS == conditioning.COMPLETION_REGIONS


@pytest.mark.parametrize("argv, topic", [(["--config", "x.py"], None), (["--help"], ""), (["--help=eval"], "eval"),
                                         (["--help", "model.unet"], "model.unet"), (["-h", "--config", "x"], "")])
def test_help_topic_reads_the_forms_a_user_types(argv, topic):
  assert command_line.help_topic(argv) == topic
