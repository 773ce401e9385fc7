"""Train, checkpoint, resume exactly, evaluate and sample with a tiny config."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from md4_jax.engine.experiment import Experiment
from md4_jax.errors import UserError
from md4_jax.run import modes
from tests.conftest import ROOT, copy_of_run, launch, launch_tiny, make_config, reference

pytestmark = pytest.mark.slow  # whole runs: the full suite only (README)

WALLCLOCK_KEYS = ("train/steps_per_sec", "train/tokens_per_sec")


def metric_rows(workdir):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in row.items() if k not in WALLCLOCK_KEYS} for row in rows]


def saved_state(workdir, step):
  """The raw arrays of checkpoint `step`, as numpy."""
  checkpointer = ocp.StandardCheckpointer()
  state = checkpointer.restore(workdir / "checkpoints" / str(step) / "state")
  checkpointer.close()
  return jax.tree.map(np.asarray, state)


def assert_same_arrays(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference_run(tiny_run, tmp_path_factory):
  """An uninterrupted 12-step run that the other tests compare against (this file's own copy)."""
  return copy_of_run(tiny_run, tmp_path_factory.mktemp("reference") / "run")


def test_training_writes_the_workdir_and_learns(reference_run):
  corpus, workdir, result = reference_run
  for name in ("config.json", "tokenizer.json", "metrics.jsonl"):
    assert (workdir / name).is_file()
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8, 12]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert (workdir / "samples" / "step_6.txt").read_text().count("=== sample") == 2
  rows = metric_rows(workdir)
  train = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12]
  evals = [r for r in rows if "eval/bpt" in r]
  assert [r["step"] for r in evals] == [6, 12]
  # The untrained model (zero-init head) predicts uniformly: its bound is exactly log2(V) bits per token.
  vocab_size = len(json.loads((workdir / "tokenizer.json").read_text())["alphabet"])
  assert evals[-1]["eval/bpt"] < np.log2(vocab_size) - 0.5
  assert np.mean([r["train/loss"] for r in train[3:]]) < train[0]["train/loss"]
  assert evals[-1]["eval/bpt"] == result["eval/bpt"]
  assert {"eval/ppl", "eval/bpt_stderr", "eval/nats"} <= set(evals[-1])


def train_until_sigterm_at_step_7(config, workdir, monkeypatch) -> int:
  """Trains `config` in this process with a SIGTERM sent during the 7th update (not a checkpoint or log
  step); returns the exit status the run stopped with."""
  original = Experiment.__init__

  def init_then_sigterm_at_step_7(self, *args, **kwargs):
    original(self, *args, **kwargs)
    step_fn = self.train_step

    def step_with_sigterm(state, batch):
      if int(state["step"]) == 6:  # the 7th update
        os.kill(os.getpid(), signal.SIGTERM)
      return step_fn(state, batch)

    self.train_step = step_with_sigterm

  monkeypatch.setattr(Experiment, "__init__", init_then_sigterm_at_step_7)
  try:
    with pytest.raises(SystemExit) as stopped:
      modes.main(config, workdir, "train", reference=reference())
  finally:
    monkeypatch.setattr(Experiment, "__init__", original)
  return stopped.value.code


def test_resume_after_sigterm_is_bitwise_identical(reference_run, tmp_path, monkeypatch):
  corpus, reference_dir, _ = reference_run
  workdir = tmp_path / "run"
  assert train_until_sigterm_at_step_7(make_config(corpus), workdir, monkeypatch) == 128 + signal.SIGTERM
  assert (workdir / "checkpoints" / "7").is_dir()  # saved on SIGTERM
  modes.main(make_config(corpus), workdir, "train", reference=reference())
  assert metric_rows(workdir) == metric_rows(reference_dir)
  assert_same_arrays(saved_state(workdir, 12), saved_state(reference_dir, 12))


def test_resume_after_sigkill_is_bitwise_identical(reference_run, tmp_path):
  corpus, reference_dir, _ = reference_run
  workdir = tmp_path / "run"
  command = [sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "tests/tiny_config.py"),
             "--workdir", str(workdir), f"--config.data.path={corpus}"]
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not (workdir / "checkpoints" / "4").is_dir() and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL
  assert not (workdir / "checkpoints" / "12").exists()  # it really was cut short
  resumed = launch(*command[2:])
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resuming from step" in resumed.stdout
  assert metric_rows(workdir) == metric_rows(reference_dir)
  assert_same_arrays(saved_state(workdir, 12), saved_state(reference_dir, 12))


def test_ctrl_c_checkpoints_says_one_line_and_resumes_exactly(reference_run, tmp_path):
  """SIGINT is handled like SIGTERM: the step in flight ends, a checkpoint is saved, exit status 130."""
  corpus, reference_dir, _ = reference_run
  workdir = tmp_path / "run"
  command = [sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "tests/tiny_config.py"),
             "--workdir", str(workdir), f"--config.data.path={corpus}"]
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not (workdir / "checkpoints" / "4").is_dir() and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGINT)
  stdout, stderr = process.communicate(timeout=240)
  assert process.returncode == 130, stderr[-2000:]
  assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
  saved = [line for line in (stdout + stderr).splitlines() if line.startswith("SIGINT: saved checkpoint")]
  assert len(saved) == 1, stdout[-2000:]
  step = int(saved[0].split()[3].rstrip(";"))
  assert 4 <= step < 12 and (workdir / "checkpoints" / str(step)).is_dir()
  resumed = launch(*command[2:])
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert metric_rows(workdir) == metric_rows(reference_dir)
  assert_same_arrays(saved_state(workdir, 12), saved_state(reference_dir, 12))


def test_eval_mode_reproduces_the_training_eval(reference_run, capsys):
  corpus, workdir, result = reference_run
  evaluated = modes.main(make_config(corpus), workdir, "eval", reference=reference())
  assert evaluated["eval/bpt"] == result["eval/bpt"]  # same EMA params, same eval keys
  assert json.loads((workdir / "eval" / "step_12.json").read_text())["eval/bpt"] == result["eval/bpt"]
  at_step_8 = modes.main(make_config(corpus), workdir, "eval", reference=reference(), step=8)
  assert at_step_8["eval/bpt"] != result["eval/bpt"]
  assert "wrote" in capsys.readouterr().out


def test_eval_mode_raw_params_time_samples_and_table(reference_run, tmp_path):
  corpus, workdir, result = reference_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  raw = modes.main(make_config(corpus, eval__params="raw", eval__time_samples=4), copy, "eval", reference=reference())
  assert raw["eval/bpt"] != result["eval/bpt"]
  saved = json.loads((copy / "eval" / "step_12.json").read_text())
  assert saved["params"] == "raw" and saved["time_samples"] == 4
  assert saved["bound"] == "continuous-time negative-ELBO bound"
  assert saved["splits"]["validation"]["bpt"] == raw["eval/bpt"]
  table = (copy / "eval" / "step_12.md").read_text()
  assert "| validation |" in table and f"{raw['eval/bpt']:.4f} +- {raw['eval/bpt_stderr']:.4f}" in table
  assert [row["steps"] for row in saved["bound_by_steps"]] == [16, 64, 256, 0]
  report = (copy / "eval" / "report.md").read_text()
  assert table in report and "| 64 |" in report and "![bound versus steps](bound_vs_steps.png)" in report
  for image in ("bound_vs_steps.png", "curves.png"):
    assert (copy / "eval" / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_mode_writes_and_prints(reference_run, capsys):
  corpus, workdir, _ = reference_run
  out = modes.main(make_config(corpus), workdir, "sample", reference=reference(), num_samples=3)
  assert len(out["samples"]) == 3 and all(len(s) == 16 for s in out["samples"])
  assert "_" not in "".join(out["samples"])  # no mask survives
  printed = capsys.readouterr().out
  assert out["path"] in printed and out["samples"][0] in printed
  rows = [json.loads(line) for line in (workdir / "samples" / "step_12_ancestral.jsonl").read_text().splitlines()]
  assert [row["text"] for row in rows] == out["samples"]
  assert rows[0]["nfe"] == 8 and rows[0]["sampler"]["steps"] == 8 and rows[0]["params"] == "ema"
  assert rows[0]["tokens_per_sec"] > 0 and len({row["tokens_per_sec"] for row in rows}) == 1  # the batch's


def test_sample_command_with_a_prompt_and_the_exact_sampler(reference_run, tmp_path):
  corpus, workdir, _ = reference_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  args = ("--mode", "sample", "--sampler.name=exact", "--prompt", "the cat", "--num_samples", "2", "--seed", "5")
  first = launch_tiny(corpus, copy, *args)
  assert first.returncode == 0, first.stderr
  rows = [json.loads(line) for line in (copy / "samples" / "step_12_exact.jsonl").read_text().splitlines()]
  assert len(rows) == 2 and all(row["text"].startswith("the cat") and len(row["text"]) == 16 for row in rows)
  assert rows[0]["nfe"] == 16 - len("the cat")  # one call per generated token
  assert rows[0]["seed"] == 5 and rows[0]["prompt"] == "the cat" and rows[0]["text"] in first.stdout
  again = launch_tiny(corpus, copy, *args)  # a second run never overwrites the first
  assert again.returncode == 0, again.stderr
  texts = lambda name: [json.loads(line)["text"] for line in (copy / "samples" / name).read_text().splitlines()]  # noqa: E731
  assert texts("step_12_exact_2.jsonl") == texts("step_12_exact.jsonl")  # same seed, same samples
  # --stop (repeatable): each sample is the same draw cut at the first stop string after the prompt.
  stopped = launch_tiny(corpus, copy, *args, "--stop", " ", "--stop", "a")
  assert stopped.returncode == 0, stopped.stderr
  rows = [json.loads(line) for line in (copy / "samples" / "step_12_exact_3.jsonl").read_text().splitlines()]
  for row, whole in zip(rows, texts("step_12_exact.jsonl")):
    generated = whole[len("the cat"):]
    cuts = [generated.index(stop) for stop in (" ", "a") if stop in generated]
    assert row["text"] == "the cat" + generated[:min(cuts, default=len(generated))]
    assert row["stop"] == ("stop_string" if cuts else "length") and row["chars"] == len(row["text"])


@pytest.mark.parametrize("sampler", [dict(sampler__name="confidence"),
                                     dict(sampler__name="semi_ar", sampler__block_length=8, sampler__semi_ar__inner="mean"),
                                     dict(sampler__name="exact", sampler__exact__tokens_per_call=3, sampler__params="raw"),
                                     dict(sampler__name="remdm", sampler__remdm__strategy="cap", sampler__remdm__eta=0.2)])
def test_infill_keeps_the_template(reference_run, tmp_path, sampler):
  corpus, workdir, _ = reference_run
  template = "the ___ sat __ t"
  out = modes.main(make_config(corpus, **sampler), workdir, "sample", reference=reference(), infill=template,
                 num_samples=2)
  for text in out["samples"]:
    assert len(text) == 16 and "_" not in text
    assert all(a == b for a, b in zip(text, template) if b != "_")


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt="the quick brown fox"), r"--prompt is 19 tokens but a sample is 16 \(data.seq_len, or --length\)"),
    (dict(infill="no gaps here"), "has no gaps"),
    (dict(prompt="the", infill="a _"), "use one"),
    (dict(prompt="THE"), "not in the tokenizer's alphabet"),
    (dict(prompt=""), "--prompt is empty, so it conditions nothing: .* leave --prompt out to sample unconditionally"),
    (dict(num_samples=0), "--num_samples=0 must be positive"),
])
def test_sample_mode_input_errors(reference_run, kwargs, message):
  corpus, workdir, _ = reference_run
  with pytest.raises(UserError, match=message):
    modes.main(make_config(corpus), workdir, "sample", reference=reference(), **kwargs)


def test_many_samples_are_drawn_in_batches_the_first_as_a_smaller_request_draws(reference_run):
  corpus, workdir, _ = reference_run
  config = make_config(corpus, sampler__batch_size=2)
  small = modes.main(config, workdir, "sample", reference=reference(), num_samples=2, seed=3)
  many = modes.main(config, workdir, "sample", reference=reference(), num_samples=5, seed=3)
  assert many["count"] == 5 and many["samples"] == small["samples"]  # returned: the first batch
  rows = [json.loads(line) for line in pathlib.Path(many["paths"][-1]).read_text().splitlines()]
  assert [row["index"] for row in rows] == [0, 1, 2, 3, 4]
  assert [row["text"] for row in rows[:2]] == small["samples"]
  assert len({row["text"] for row in rows}) == 5  # each batch draws with its own key
  assert pathlib.Path(many["paths"][0]).read_text().count("=== sample") == 5


def test_samples_that_cannot_fit_on_the_disk_are_refused_before_any_work(reference_run, monkeypatch):
  corpus, workdir, _ = reference_run
  before = sorted((workdir / "samples").iterdir())
  monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 20_000, 20_000))
  with pytest.raises(UserError, match=r"100 samples of 16 tokens need at least 33.2 kB in .*samples, and its disk "
                                      r"has 20.0 kB free: ask for fewer \(--num_samples, --length\) or free space"):
    modes.main(make_config(corpus), workdir, "sample", reference=reference(), num_samples=100)
  assert sorted((workdir / "samples").iterdir()) == before


def test_sampling_flags_outside_sample_mode_are_refused(reference_run):
  corpus, workdir, _ = reference_run
  with pytest.raises(UserError, match="--seed only apply to --mode sample.*--config.seed"):
    modes.main(make_config(corpus), workdir, "eval", reference=reference(), seed=3)


def test_eval_on_an_empty_workdir_is_a_clear_error(tmp_path, corpus_file):
  result = launch("--config", ROOT / "tests/tiny_config.py", "--workdir", tmp_path / "none", "--mode", "eval",
                  f"--config.data.path={corpus_file}")
  assert result.returncode == 2
  assert "holds no run" in result.stderr and "Traceback" not in result.stderr


def test_embedded_corpus_run(tmp_path):
  config = make_config(tmp_path / "unused.txt", data__source="embedded", data__path="", train__num_steps=2,
                       train__eval_every=2)
  result = modes.main(config, tmp_path / "run", "train", reference=reference())
  assert json.loads((tmp_path / "run" / "tokenizer.json").read_text())["alphabet"] == " abcdefghijklmnopqrstuvwxyz"
  assert 0 < result["eval/bpt"] < np.log2(27) + 1e-3  # never above the uniform bound (zero-init head)
  assert result["eval/num_tokens"] == 16 * 16  # eval.max_sequences x data.seq_len
