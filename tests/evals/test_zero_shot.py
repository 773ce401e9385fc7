"""`--mode eval --eval.suite=zero_shot` on a GPT-2-tokenized run, over fixture benchmark files."""

import json
import math

import ml_collections
import pytest

from md4_jax.data import tokenizers, zero_shot_sets
from md4_jax.errors import UserError
from md4_jax.evals import zero_shot
from md4_jax.run import modes
from tests.conftest import CORPUS, make_config, reference
from tests.test_benchmarks import write_releases


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory):
  """A tiny GPT-2-tokenized MD4 run (2 steps) and fixture benchmarks prepared for it: (config, workdir)."""
  root = tmp_path_factory.mktemp("zero_shot")
  corpus = root / "corpus.txt"
  corpus.write_text(CORPUS)
  with pytest.MonkeyPatch.context() as patch:
    for name, entry in write_releases(root / "releases").items():
      patch.setitem(zero_shot_sets.BENCHMARKS, name, entry)
    config = make_config(corpus, data__tokenizer="gpt2", data__dir=str(root / "data"), train__num_steps=2,
                         train__eval_every=2, train__checkpoint_every=2, eval__max_sequences=1)
    modes.main(config, root / "run", "train", reference=reference())
    config.eval.suite = "zero_shot"
    modes.main(config, None, "prepare", reference=reference())
  return config, root / "run"


@pytest.mark.slow
def test_zero_shot_eval_covers_every_row_of_every_benchmark(gpt2_run):
  config, workdir = gpt2_run
  result = modes.main(config, workdir, "eval", reference=reference())
  written = json.loads((workdir / "eval" / "zero_shot_step_2.json").read_text())
  seq_len = config.data.seq_len
  for name in zero_shot_sets.BENCHMARKS:
    stream, meta = zero_shot_sets.load(name, config.data.dir, tokenizers.load_tokenizer(workdir / "tokenizer.json"))
    values = written["benchmarks"][name]
    rows = len(stream) // seq_len  # every full row, though eval.max_sequences=1
    assert rows >= 2 and values["rows"] == rows and values["num_tokens"] == rows * seq_len
    assert values["dropped_tail_tokens"] == len(stream) - rows * seq_len and values["documents"] == meta["documents"]
    assert math.isclose(values["ppl"], math.exp(values["nats"]))
    assert result[f"eval/zero_shot/{name}/ppl"] == values["ppl"]
  # The two WikiText columns read the same test file, so with the same eval key they must agree exactly.
  assert written["benchmarks"]["wikitext2"]["nats"] == written["benchmarks"]["wikitext103"]["nats"]
  table = (workdir / "eval" / "zero_shot_step_2.md").read_text()
  assert "| Method | LAMBADA | WikiText2 | PTB | WikiText103 | 1BW |" in table
  assert f"| run (step 2) | ≤ {written['benchmarks']['lambada']['ppl']:.2f} |" in table
  assert table in (workdir / "eval" / "report.md").read_text()
  last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
  assert last["step"] == 2 and last["eval/zero_shot/ptb/num_tokens"] == written["benchmarks"]["ptb"]["num_tokens"]


def test_zero_shot_eval_before_prepare_names_the_prepare_command(gpt2_run, tmp_path):
  config, workdir = gpt2_run
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.dir = str(tmp_path / "empty")  # also: a workdir's data may move (data.dir is not part of a run)
  with pytest.raises(UserError, match="LAMBADA benchmark is not prepared.*--mode prepare --eval.suite=zero_shot"):
    modes.main(config, workdir, "eval", reference=reference())


def test_table_layout_exact_and_published_rows():
  values = {"ppl": 12.345, "ppl_stderr": 0.5, "nats": math.log(12.345), "num_tokens": 32, "documents": 3,
            "rows": 2, "dropped_tail_tokens": 5}
  results = {"ptb": {**values, "column": "PTB"}, "lm1b": {**values, "column": "1BW"}}
  bound = zero_shot.table(results, "mine", exact=False)
  assert bound.splitlines()[:3] == ["| Method | PTB | 1BW |", "|---|---|---|", "| mine | ≤ 12.35 | ≤ 12.35 |"]
  assert "| MD4 small, published | ≤ 102.26 | ≤ 68.10 |" in bound
  assert "| GPT-2 small (WebText), published | 138.43 | 75.20 |" in bound
  exact = zero_shot.table(results, "mine", exact=True)
  assert "| mine | 12.35 | 12.35 |" in exact and "| PTB | 3 | 2 | 32 | 5 | 2.5133 | 12.35 +- 0.50 |" in exact


def test_a_tokenizer_without_end_of_text_is_refused_at_prepare(tmp_path):
  config = make_config(tmp_path / "unused.txt", eval__suite="zero_shot", data__dir=str(tmp_path))
  config.data.source, config.data.path = "embedded", ""
  with pytest.raises(UserError, match="zero-shot benchmarks join documents with end-of-text.*gpt2"):
    modes.main(config, None, "prepare", reference=reference())


def test_unknown_benchmark_is_a_config_error(tmp_path):
  config = make_config(tmp_path / "unused.txt", eval__zero_shot="lambada,hellaswag")
  with pytest.raises(UserError, match="eval.zero_shot='lambada,hellaswag'"):
    modes.main(config, tmp_path / "w", "eval", reference=reference())


