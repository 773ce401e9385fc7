"""Mistakes that used to surface only at the first step or evaluation are one `error:` line at the start:
batch sizes the mesh's data-parallel devices do not divide, exact-sampler calls longer than a sample,
and a held-out split left empty. Each runs through launch.py, as a user meets it."""

import types

import numpy as np
import pytest

from md4_jax.data import pipeline, sources
from md4_jax.data.rows import Data, StreamRows
from md4_jax.errors import UserError
from md4_jax.run import config_check
from tests.conftest import ROOT, assert_clear_error, launch, launch_tiny, make_config

EIGHT_DEVICES = "--xla_force_host_platform_device_count=8"


def assert_one_line_error(result, *fragments):
  """Exit status 2 and a single `error: ...` line on stderr holding every fragment, no traceback."""
  assert_clear_error(result, *fragments)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and all(fragment in lines[0] for fragment in fragments), result.stderr[-3000:]


@pytest.fixture
def eight_devices(monkeypatch):
  """launch.py subprocesses see 8 simulated CPU devices (mesh (8, 1, 1) by default)."""
  monkeypatch.setenv("XLA_FLAGS", EIGHT_DEVICES)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["train.batch_size", "eval.batch_size"])
def test_a_batch_size_the_devices_do_not_divide_fails_before_any_work(tmp_path, corpus_file, eight_devices, key):
  # Before: an IndivisibleError traceback at the first step (train) or after training, at the first eval.
  workdir = tmp_path / "run"
  result = launch_tiny(corpus_file, workdir, f"--config.{key}=12")
  assert_one_line_error(result, f"{key}=12 does not split over the mesh's 8 data-parallel devices",
                        "mesh.data x mesh.fsdp = 8 x 1", "8 or 16", f"--config.{key}=16")
  assert not workdir.exists()  # no data read, no workdir, nothing compiled


@pytest.mark.slow
def test_eval_mode_checks_the_eval_batch_only_where_a_suite_uses_it(tmp_path, corpus_file, eight_devices):
  # Checked before the workdir is even read; the samples suite draws replicated samples, so it is not refused.
  empty = tmp_path / "none"
  result = launch_tiny(corpus_file, empty, "--mode", "eval", "--config.eval.batch_size=12")
  assert_one_line_error(result, "eval.batch_size=12 does not split", "8 or 16")
  result = launch_tiny(corpus_file, empty, "--mode", "eval", "--config.eval.batch_size=12",
                       "--config.eval.suite=samples")
  assert_one_line_error(result, str(empty))  # the next check's error: the workdir holds no run
  assert "does not split" not in result.stderr


def test_the_data_parallel_size_counts_both_batch_axes_and_microbatches_and_samples_are_free(corpus_file):
  mesh = types.SimpleNamespace(shape={"data": 2, "fsdp": 4, "tensor": 1})
  with pytest.raises(UserError, match=r"train.batch_size=12 .* 8 data-parallel devices \(mesh.data x mesh.fsdp "
                                      r"= 2 x 4.*such as 8 or 16"):
    config_check.check_against_devices(make_config(corpus_file, train__batch_size=12), "train", mesh)
  # 8 rows in 2 microbatches of 4 on 8 devices train (XLA reshards the microbatch); samples are replicated.
  config_check.check_against_devices(make_config(corpus_file, train__grad_accum=2, sampler__num_samples=3),
                                     "train", mesh)
  config_check.check_against_devices(make_config(corpus_file, train__batch_size=12), "sample", mesh)


@pytest.mark.parametrize("config, args, message", [
    ("tiny_config", ["--config.sampler.name=exact", "--config.sampler.exact.tokens_per_call=17"],
     "sampler.exact.tokens_per_call=17 unmasks more positions per call than the 16 of a sample"),
    ("tiny_config", ["--config.sampler.name=semi_ar", "--config.sampler.block_length=8",
                     "--config.sampler.semi_ar.inner=exact", "--config.sampler.exact.tokens_per_call=17"],
     "sampler.exact.tokens_per_call=17 unmasks more positions per call than the 16 of a sample"),
    ("tiny_config", ["--mode", "eval", "--config.eval.suite=samples", "--config.eval.samplers=ancestral:8,exact:32"],
     "eval.samplers item exact:32: sampler.exact.tokens_per_call=32 unmasks more positions per call than the 16 of a "
     "sample"),
    ("tiny_image_config", ["--config.sampler.name=exact", "--config.sampler.exact.tokens_per_call=65"],
     "sampler.exact.tokens_per_call=65 unmasks more positions per call than the 64 of a sample"),  # digits: 8 x 8 x 1
])
@pytest.mark.slow
def test_more_tokens_per_call_than_a_sample_has_fails_at_start(tmp_path, corpus_file, config, args, message):
  # Before: a jax.lax.top_k ValueError traceback at the first samples, after training.
  workdir = tmp_path / "run"
  result = launch("--config", ROOT / f"tests/{config}.py", "--workdir", workdir, f"--config.data.path={corpus_file}",
                  *args)
  assert_one_line_error(result, message, "use 1 to")
  assert not workdir.exists()


def test_a_held_out_part_of_only_unseen_characters_fails_at_start(tmp_path):
  # The last 10% (data.eval_fraction=0.1) is 100 X's, a character the first 900 never use: nothing is
  # left to evaluate once unseen characters are dropped. Before: KeyError: 'num_tokens' at the first eval.
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("ab " * 300 + "X" * 100, encoding="utf-8")
  workdir = tmp_path / "run"
  result = launch_tiny(corpus, workdir)
  assert_one_line_error(result, f"data.path={corpus}", "last 100 characters", "data.eval_fraction=0.1",
                        "longer file", "larger data.eval_fraction")
  assert not (workdir / "checkpoints").exists()


def test_any_empty_held_out_split_is_refused_when_the_data_loads(corpus_file, monkeypatch):
  """A source whose held-out split has no rows (what a packed hub set's empty validation shard gives)."""
  textfile_load = sources.textfile.load

  def load(data_config, split, saved):
    data = textfile_load(data_config, split, saved)
    return Data(data.modality, data.train, StreamRows(np.zeros(0, np.int32), data_config.seq_len, pad_last=True))

  monkeypatch.setattr(sources.textfile, "load", load)
  with pytest.raises(UserError, match="held-out split 'validation' of data.source='textfile' is empty"):
    pipeline.load_data(make_config(corpus_file).data)
