"""Config sweeps: --sweep runs every variant in WORKDIR/<name>, --sweep_index one, --dry_run lists them."""

import json

import pytest

from md4_jax.run import sweeps
from tests.conftest import ROOT, launch

pytestmark = pytest.mark.slow  # whole runs: the full suite only (README)

SWEEP_CONFIG = '''
from tests import tiny_config


def get_config():
  config = tiny_config.get_config()
  config.train.num_steps = 2
  config.train.eval_every = 2
  config.train.checkpoint_every = 2
  return config


def sweep(add):
  for rate in (0.01, 0.002):
    add(train__learning_rate=rate, **{"diffusion.schedule": "cosine"})
'''

NAMES = ["train.learning_rate=0.01,diffusion.schedule=cosine", "train.learning_rate=0.002,diffusion.schedule=cosine"]


def write_sweep(tmp_path, text=SWEEP_CONFIG):
  path = tmp_path / "sweep_config.py"
  path.write_text(text)
  return path


def test_dry_run_lists_the_shipped_example():
  result = launch("--config", ROOT / "configs/quickstart_sweep.py", "--workdir", "unused", "--sweep", "--dry_run")
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 6 and lines[0] == "0\tdiffusion.schedule=linear,train.learning_rate=0.001"


def test_sweep_runs_every_variant_in_its_own_directory(tmp_path, corpus_file):
  config = write_sweep(tmp_path)
  args = ("--config", config, f"--config.data.path={corpus_file}")
  result = launch(*args, "--workdir", tmp_path / "all", "--sweep")
  assert result.returncode == 0, result.stderr[-3000:]
  for name, rate in zip(NAMES, (0.01, 0.002)):
    saved = json.loads((tmp_path / "all" / name / "config.json").read_text())
    assert saved["train"]["learning_rate"] == rate and saved["diffusion"]["schedule"] == "cosine"
    assert (tmp_path / "all" / name / "checkpoints" / "2").is_dir()
  result = launch(*args, "--workdir", tmp_path / "one", "--sweep_index", "1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert [p.name for p in (tmp_path / "one").iterdir()] == [NAMES[1]]


def test_sweep_mistakes_are_clear_errors(tmp_path, corpus_file):
  args = ("--workdir", tmp_path / "w", f"--config.data.path={corpus_file}")
  cases = [
      (SWEEP_CONFIG, ["--sweep_index", "2"], "the sweep has runs 0..1"),
      (SWEEP_CONFIG.replace("train__learning_rate", "train__learning_rat"), ["--sweep"], "unknown config key 'train.learning_rat'"),
      (SWEEP_CONFIG.split("def sweep")[0], ["--sweep"], "defines no sweep(add) function"),
      (SWEEP_CONFIG, ["--dry_run"], "use it with --sweep"),
  ]
  for text, flags, message in cases:
    result = launch("--config", write_sweep(tmp_path, text), *args, *flags)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_variant_names_are_one_safe_directory_name():
  assert sweeps.variant_name({"data.path": "/a/b c"}) == "data.path=_a_bc"
  assert sweeps.variant_name({}) == "base"
