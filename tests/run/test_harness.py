"""lm-evaluation-harness on tiny AR and MD4 runs (run/harness.py): local tasks written from the training corpus
(multiple choice against shuffled characters, rolling log-likelihood, generation with a stop string), through
lm_eval's own evaluator."""

import math
import os
import subprocess
import sys

import pytest
from scipy import stats

from benchmarks import harness_mc
from md4_jax.errors import UserError
from md4_jax.run import harness
from tests.conftest import CORPUS, ROOT, train_tiny

lm_eval = pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow

QUESTIONS, CHOICES, STOP = 80, harness_mc.CHOICES, "t"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{objective: workdir}: the tiny config trained autoregressively (60 steps) and as MD4 (240: it learns slower)."""
  return {objective: train_tiny(tmp_path_factory.mktemp(objective), objective=objective, train__num_steps=steps,
                                train__eval_every=steps, train__checkpoint_every=steps)[1]
          for objective, steps in (("ar", 60), ("md4", 240))}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
  """A directory of three local tasks (YAML + jsonl): md4_mc (the benchmark's: a passage's next 8 characters
  among 3 shuffles of them), md4_rolling, md4_until."""
  root = harness_mc.write_multiple_choice(tmp_path_factory.mktemp("tasks"), CORPUS, QUESTIONS, 24, 8)
  common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / 'docs.jsonl'}\ntest_split: test\n"
  (root / "rolling.yaml").write_text("task: md4_rolling\n" + common + "output_type: loglikelihood_rolling\n"
                                     'doc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n'
                                     "  - metric: word_perplexity\n  - metric: bits_per_byte\n")
  (root / "until.yaml").write_text("task: md4_until\n" + common + "output_type: generate_until\n"
                                   'doc_to_text: "{{context}}"\ndoc_to_target: "{{text}}"\n'
                                   f"generation_kwargs:\n  until: ['{STOP}']\n  max_gen_toks: 12\n"
                                   "metric_list:\n  - metric: exact_match\n")
  return root


def launch_module(module: str, *args, extra_env=None) -> subprocess.CompletedProcess:
  """python -m MODULE ARGS from the repository root (as the README runs the harness)."""
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env={**os.environ, **(extra_env or {})})


def evaluate(workdir, tasks_dir, names, monkeypatch, **model_args):
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  model = harness.register()(workdir=str(workdir), batch_size=8, **model_args)
  from lm_eval.tasks import TaskManager  # noqa: PLC0415 (the optional harness)

  manager = TaskManager(include_path=str(tasks_dir))
  return lm_eval.simple_evaluate(model=model, tasks=names, task_manager=manager, log_samples=True)


@pytest.mark.parametrize("objective, model_args", [("ar", {}), ("md4", {"mc_samples": 32})])
def test_multiple_choice_beats_chance_and_rolling_is_finite(runs, tasks, monkeypatch, objective, model_args):
  results = evaluate(runs[objective], tasks, ["md4_mc", "md4_rolling"], monkeypatch, **model_args)
  accuracy = results["results"]["md4_mc"]["acc,none"]
  right = round(accuracy * QUESTIONS)
  assert stats.binomtest(right, QUESTIONS, 1 / CHOICES, alternative="greater").pvalue < 0.01, accuracy
  assert math.isfinite(results["results"]["md4_rolling"]["bits_per_byte,none"])


def test_generation_stops_at_the_until_string(runs, tasks, monkeypatch):
  results = evaluate(runs["md4"], tasks, ["md4_until"], monkeypatch)
  responses = [sample["resps"][0][0] for sample in results["samples"]["md4_until"]]
  assert len(responses) == QUESTIONS and all(STOP not in text and len(text) <= 12 for text in responses)
  assert any(len(text) < 12 for text in responses)  # some stopped early, at the string


def test_the_command_line_runs_lm_evals_own(runs, tasks):
  """python -m md4_jax.run.harness: lm_eval's command line with `md4_jax` registered (its --batch_size passed on)."""
  result = launch_module("md4_jax.run.harness", "--model", "md4_jax", "--model_args", f"workdir={runs['ar']}",
                         "--batch_size", "8", "--tasks", "md4_mc", "--include_path", str(tasks), "--limit", "8",
                         extra_env={"HF_DATASETS_OFFLINE": "1"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "md4_mc" in result.stdout and "acc" in result.stdout


def test_the_harness_names_bad_arguments(runs, tmp_path):
  with pytest.raises(UserError, match="holds no run"):
    harness.Harness(str(tmp_path))
  with pytest.raises(UserError, match="params='best': choose 'ema'"):
    harness.Harness(str(runs["ar"]), params="best")
  with pytest.raises(UserError, match="empty continuation"):
    harness.Harness(str(runs["ar"])).loglikelihood([("the", "")])
