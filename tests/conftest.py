"""Shared fixtures: a tiny config, a small corpus file, and a launcher for the command line."""

import dataclasses
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

# Many tests start `launch.py` on the same tiny config in a fresh interpreter, and XLA's compile is most of such a
# run. JAX's persistent compilation cache (set here, before jax is imported, and inherited by every subprocess) lets
# them share compiled programs. Its key is the program, the compile options, the devices and the jax version, so a
# hit is the executable a compile would have made: numerics are unchanged. One empty directory per session: the
# pytest-xdist workers inherit the controller's. A size limit makes JAX lock the directory (filelock) around each
# read and write, so one worker never reads an entry another is half-way through writing.
COMPILE_CACHE = tempfile.mkdtemp(prefix="md4_jax_tests_xla_")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", COMPILE_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import base  # noqa: E402
from tests import tiny_config  # noqa: E402

CORPUS = "the quick brown fox jumps over the lazy dog. a cat sat on the mat and ate a fat rat. " * 60


@pytest.fixture
def corpus_file(tmp_path) -> pathlib.Path:
  path = tmp_path / "corpus.txt"
  path.write_text(CORPUS, encoding="utf-8")
  return path


@pytest.fixture
def offline_dns(monkeypatch):
  """Name lookups hang for a minute, then fail: what this machine's resolver does offline."""
  def hanging_dns(*args, **kwargs):
    time.sleep(60)
    raise socket.gaierror("no network")

  monkeypatch.setattr(socket, "getaddrinfo", hanging_dns)


def override(config, **overrides):
  """Dotted overrides like `train__num_steps=20`, `model__unet__channels=32` or `objective="ar"`."""
  for key, value in overrides.items():
    *groups, name = key.split("__")
    target = config
    for group in groups:
      target = target[group]
    target[name] = value
  return config


def make_config(corpus: pathlib.Path, **overrides):
  """The tiny config on `corpus`, with overrides as in `override`."""
  config = tiny_config.get_config()
  config.data.path = str(corpus)
  return override(config, **overrides)


def reference():
  return base.get_config()


def transformer_config(vocab_size: int, seq_len: int, **changes):
  """models.transformer.TransformerConfig from configs/base.py's model group (the one place its defaults
  live) for a vocabulary and length, with changes."""
  from md4_jax.data.modality import Text  # noqa: PLC0415 (jax is imported after the settings above)
  from md4_jax.models import transformer  # noqa: PLC0415

  config = transformer.build(base.get_config(), Text(vocab_size, seq_len), {}).config
  return dataclasses.replace(config, **changes)


def sampler_settings(name: str | None = None, **changes):
  """samplers.Settings from configs/base.py's sampler group (the one place its defaults live), with changes."""
  from md4_jax import samplers  # noqa: PLC0415 (jax is imported after the compilation-cache settings above)

  settings = samplers.settings(base.get_config().sampler)
  return dataclasses.replace(settings, **({"name": name} if name else {}), **changes)


def launch(*args, timeout=300, extra_env=None) -> subprocess.CompletedProcess:
  """Runs `python launch.py ARGS` from the repository root and returns the finished process."""
  return subprocess.run([sys.executable, str(ROOT / "launch.py"), *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})})


def launch_tiny(corpus: pathlib.Path, workdir: pathlib.Path, *args, **kwargs):
  return launch("--config", ROOT / "tests/tiny_config.py", "--workdir", workdir,
                f"--config.data.path={corpus}", *args, **kwargs)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """(corpus, workdir, last eval): the tiny config trained once per test process (each xdist worker) and shared
  by the files that need a finished run; use `copy_of_run` for one to change."""
  return train_tiny(tmp_path_factory.mktemp("tiny_run"))


def train_tiny(root: pathlib.Path, **overrides):
  """(corpus, workdir, last eval): CORPUS written to root/corpus.txt and the tiny config with `overrides` (as in
  `override`) trained on it in root/run, in this process."""
  from md4_jax.run import modes  # noqa: PLC0415 (jax is imported after the compilation-cache settings above)

  corpus = root / "corpus.txt"
  corpus.write_text(CORPUS)
  result = modes.main(make_config(corpus, **overrides), root / "run", "train", reference=reference())
  return corpus, root / "run", result


def copy_of_run(run, target: pathlib.Path):
  """(corpus, a copy of the run's workdir at `target`, last eval): the same corpus file, so the copy resumes."""
  corpus, workdir, result = run
  shutil.copytree(workdir, target)
  return corpus, target, result


def pytest_sessionfinish(session, exitstatus):
  shutil.rmtree(COMPILE_CACHE, ignore_errors=True)


def assert_clear_error(result, *fragments):
  """A failed command's stderr: no traceback, and every fragment of the message."""
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in result.stderr, result.stderr[-3000:]
