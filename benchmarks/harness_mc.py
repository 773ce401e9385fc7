"""A local multiple-choice task through lm-evaluation-harness on finished runs: accuracy and seconds per request.

  python benchmarks/harness_mc.py --run ar=runs/quickstart_ar --run md4=runs/quickstart \
      --run bd3=runs/quickstart_bd3 --mc_samples 1,8,32 [--questions 200] [--batch_size 32]

Each question is a held-out passage of the embedded corpus (the quick start's validation text, so no run trained
on it): a context of --context characters, and as choices its next --answer characters and three shuffles of
them (same characters, other order). Exact runs (AR) are scored once; the others once per --mc_samples value
(K stratified draws of the bound per request). Prints one JSON line per (run, K): accuracy, its standard
error, requests (questions x choices), seconds per request. Needs the harness extra (pip install -e ".[harness]").
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

CHOICES = 4


def write_multiple_choice(root: pathlib.Path, text: str, questions: int, context: int, answer: int,
                          seed: int = 0, name: str = "md4_mc") -> pathlib.Path:
  """A lm-eval task directory (name.yaml + docs.jsonl) of `questions` passages of `text`: the context, and the
  true continuation among CHOICES - 1 distinct shuffles of its characters. Returns root."""
  rng = np.random.default_rng(seed)
  docs = []
  for index in range(questions):
    start = int(rng.integers(0, len(text) - context - answer))
    right = text[start + context:start + context + answer]
    choices = [right]
    while len(choices) < CHOICES:
      shuffled = "".join(rng.permutation(list(right)))
      if shuffled not in choices:
        choices.append(shuffled)
    order = rng.permutation(CHOICES)
    docs.append({"context": text[start:start + context], "choices": [choices[i] for i in order],
                 "label": int(np.argmax(order == 0)), "text": text[start:start + context + answer], "id": index})
  (root / "docs.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
  (root / f"{name}.yaml").write_text(
      f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / 'docs.jsonl'}\n"
      "test_split: test\noutput_type: multiple_choice\n"
      'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
      "target_delimiter: ''\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
  return root


def held_out_text() -> str:
  """The quick start's validation text: the tail of the embedded corpus (configs/quickstart.py's eval_fraction)."""
  from configs import quickstart  # noqa: PLC0415
  from md4_jax.data import corpora  # noqa: PLC0415
  from md4_jax.data.sources.text import split_text  # noqa: PLC0415

  return split_text(corpora.embedded_wikipedia(), quickstart.get_config().data.eval_fraction)[1]


def score(workdir: str, tasks: pathlib.Path, mc_samples: int, batch_size: int, questions: int) -> dict:
  import lm_eval  # noqa: PLC0415 (the optional harness)
  from lm_eval.tasks import TaskManager  # noqa: PLC0415

  from md4_jax.run import harness  # noqa: PLC0415

  model = harness.register()(workdir=workdir, mc_samples=mc_samples, batch_size=batch_size)
  manager = TaskManager(include_path=str(tasks))
  start = time.perf_counter()
  results = lm_eval.simple_evaluate(model=model, tasks=["md4_mc"], task_manager=manager)["results"]["md4_mc"]
  seconds = time.perf_counter() - start
  return {"accuracy": round(results["acc,none"], 4), "stderr": round(results["acc_stderr,none"], 4),
          "requests": questions * CHOICES, "seconds_per_request": round(seconds / (questions * CHOICES), 4),
          "seconds": round(seconds, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", action="append", required=True, help="NAME=WORKDIR (repeatable)")
  parser.add_argument("--mc_samples", default="1,8,32", help="K values for runs whose likelihood is a bound")
  parser.add_argument("--questions", type=int, default=200)
  parser.add_argument("--context", type=int, default=64, help="characters of context")
  parser.add_argument("--answer", type=int, default=16, help="characters of each choice")
  parser.add_argument("--batch_size", type=int, default=32)
  args = parser.parse_args()
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task is local: nothing to download
  from md4_jax import objectives  # noqa: PLC0415

  with tempfile.TemporaryDirectory() as directory:
    tasks = write_multiple_choice(pathlib.Path(directory), held_out_text(), args.questions, args.context, args.answer)
    for name, _, workdir in (item.partition("=") for item in args.run):
      objective = json.loads((pathlib.Path(workdir) / "config.json").read_text()).get("objective", "md4")
      exact = objectives.get(objective).exact
      for k in [1] if exact else [int(k) for k in args.mc_samples.split(",")]:
        row = score(workdir, tasks, k, args.batch_size, args.questions)
        print(json.dumps({"run": name, "objective": objective, "mc_samples": None if exact else k, **row}),
              flush=True)


if __name__ == "__main__":
  main()
