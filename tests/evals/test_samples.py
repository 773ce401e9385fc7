"""Sample quality: unigram entropy, generative perplexity under an AR judge, the per-sampler table."""

import json
import math
import shutil

import numpy as np
import pytest
from flax import nnx

from md4_jax.core import ar_likelihood
from md4_jax.data import modality
from md4_jax.engine import sharding
from md4_jax.errors import UserError
from md4_jax.evals import samples as sample_quality
from md4_jax.run import modes
from tests.conftest import copy_of_run, make_config, reference


def test_unigram_entropy_sees_repetition():
  assert sample_quality.unigram_entropy_bits(np.zeros((4, 16), int), 27) == 0.0
  assert sample_quality.unigram_entropy_bits(np.tile([0, 1], (4, 8)), 27) == pytest.approx(1.0)
  assert sample_quality.unigram_entropy_bits(np.arange(32).reshape(2, 16), 32) == pytest.approx(5.0)


def test_sampler_variants_parse_or_fail_clearly():
  assert sample_quality.parse_variants("ancestral:100, exact:2,parallel:0.9:dual,ancestral:8:exact") == [
      {"name": "ancestral", "steps": 100}, {"name": "exact", "exact": {"tokens_per_call": 2}},
      {"name": "parallel", "parallel": {"threshold": 0.9}, "kv_cache": "dual"},
      {"name": "ancestral", "steps": 8, "kv_cache": "exact"}]
  assert sample_quality.variant_label({"name": "parallel", "parallel": {"threshold": 0.9}, "kv_cache": "dual"}) == (
      "parallel:0.9:dual")
  assert sample_quality.parse_variants("remdm:64,remdm:128:loop") == [
      {"name": "remdm", "steps": 64}, {"name": "remdm", "steps": 128, "remdm": {"strategy": "loop"}}]
  assert sample_quality.variant_label({"name": "remdm", "steps": 128, "remdm": {"strategy": "cap"}}) == "remdm:128:cap"
  for bad in ("ancestral", "exact:0", "", "parallel:x", "ancestral:2.5", "parallel:0.9:dual:1", "remdm:128:dual"):
    with pytest.raises(UserError, match="eval.samplers"):
      sample_quality.parse_variants(bad)


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory):
  root = tmp_path_factory.mktemp("quality")
  corpus, _, _ = copy_of_run(tiny_run, root / "md4")
  modes.main(make_config(corpus, objective="ar"), root / "ar", "train", reference=reference())
  return corpus, root


@pytest.mark.slow
def test_samples_suite_writes_a_table_per_sampler(runs):
  corpus, root = runs
  config = make_config(corpus, eval__suite="samples", eval__samplers="ancestral:4,exact:1",
                       eval__judge=str(root / "ar"), sampler__num_samples=3)
  result = modes.main(config, root / "md4", "eval", reference=reference())
  assert [row["sampler"] for row in result["samplers"]] == ["ancestral:4", "exact:1"]
  assert [row["nfe"] for row in result["samplers"]] == [4, 16]
  for row in result["samplers"]:
    assert 1.0 < row["gen_ppl"] < 1e4 and 0 < row["unigram_entropy_bits"] <= math.log2(27)
    assert 0 < row["gen_ppl_stderr"] < row["gen_ppl"]
    # tokens/s = 48 tokens over the unrounded seconds; the row's seconds are rounded to 1 ms
    seconds = row["seconds"]
    assert 48 / (seconds + 6e-4) - 0.1 <= row["tokens_per_sec"] <= 48 / max(seconds - 6e-4, 1e-9) + 0.1
  assert 3.0 < result["held_out_unigram_entropy_bits"] < math.log2(27)
  table = (root / "md4" / "eval" / "samples_step_12.md").read_text()
  assert "| exact:1 | 16 |" in table
  assert json.loads((root / "md4" / "eval" / "samples_step_12.json").read_text())["judge"] == str(root / "ar")


@pytest.mark.slow
def test_samples_suite_scores_a_bd3_run_the_same_with_and_without_its_cache(runs):
  corpus, root = runs
  modes.main(make_config(corpus, objective="bd3"), root / "bd3", "train", reference=reference())
  rows = {}
  for kv_cache in ("none", "exact"):
    config = make_config(corpus, objective="bd3", eval__suite="samples", eval__samplers="ancestral:8,exact:1",
                         eval__judge=str(root / "ar"), sampler__num_samples=3, sampler__kv_cache=kv_cache)
    rows[kv_cache] = modes.main(config, root / "bd3", "eval", reference=reference())["samplers"]
  for uncached, cached in zip(rows["none"], rows["exact"]):  # the same draws: the same scores
    assert uncached["nfe"] == cached["nfe"] and uncached["text"] == cached["text"]
    assert uncached["gen_ppl"] == pytest.approx(cached["gen_ppl"], rel=1e-6) and 1.0 < cached["gen_ppl"] < 1e4


@pytest.mark.slow
def test_samples_suite_scores_parallel_decoding_with_its_caches(runs):
  """refresh every call: the dual cache draws what no cache draws, so both score the same."""
  corpus, root = runs
  rows = []
  for variants in ("parallel:1.0:none,parallel:0.5:prefix", "parallel:1.0"):  # the first variants share a key
    config = make_config(corpus, eval__suite="samples", eval__samplers=variants, eval__judge=str(root / "ar"),
                         sampler__num_samples=3, sampler__name="parallel", sampler__block_length=4,
                         sampler__kv_cache="dual", sampler__parallel__cache_refresh=1)
    rows += modes.main(config, root / "md4", "eval", reference=reference())["samplers"]
  assert [row["sampler"] for row in rows] == ["parallel:1.0:none", "parallel:0.5:prefix", "parallel:1.0"]
  assert rows[0]["nfe"] == rows[2]["nfe"] == 16 and rows[0]["text"] == rows[2]["text"]  # one token per call
  assert rows[0]["gen_ppl"] == pytest.approx(rows[2]["gen_ppl"], rel=1e-6) and 1.0 < rows[1]["gen_ppl"] < 1e4
  bad = make_config(corpus, eval__suite="samples", eval__samplers="ancestral:8:dual", eval__judge=str(root / "ar"))
  with pytest.raises(UserError, match="eval.samplers item ancestral:8:dual: .*caches block by block"):
    modes.main(bad, root / "md4", "eval", reference=reference())


def test_judge_perplexity_is_the_exact_likelihood(runs, tmp_path):
  corpus, root = runs
  # A judge trained before keys were added (its config.json lacks them) still loads: they take this run's values.
  shutil.copytree(root / "ar", tmp_path / "ar")
  saved_json = json.loads((tmp_path / "ar" / "config.json").read_text())
  del saved_json["sampler"]["parallel"], saved_json["sampler"]["kv_cache"]
  (tmp_path / "ar" / "config.json").write_text(json.dumps(saved_json))
  saved = modality.load(tmp_path / "ar")
  tokenizer = saved.tokenizer
  judge = sample_quality.Judge(str(tmp_path / "ar"), saved, sharding.make_mesh(make_config(corpus).mesh),
                               make_config(corpus))
  tokens = np.asarray([tokenizer.encode("the cat sat on t"), tokenizer.encode("a fat rat ate th")])
  network = nnx.merge(judge.experiment.graphdef, judge.params)
  nll_N = np.asarray(ar_likelihood.nll_terms(network, tokens, vocab_size=tokenizer.vocab_size)["loss"], np.float64)
  perplexity, stderr = judge.perplexity(tokens)
  assert perplexity == pytest.approx(math.exp(nll_N.sum() / tokens.size), rel=1e-5)
  # The delta method over the 2 sequences: |a - b| / 2 is the standard error of their mean per-token NLL.
  per_token = nll_N / tokens.shape[1]
  assert abs(per_token[0] - per_token[1]) > 0.01
  assert stderr == pytest.approx(perplexity * abs(per_token[0] - per_token[1]) / 2, rel=1e-4)
  assert judge.perplexity(tokens[:1])[1] is None


@pytest.mark.parametrize("judge, message", [("md4", "whose likelihood is a bound; the judge must score exactly"),
                                            ("none", "holds no run")])
def test_a_bad_judge_is_a_clear_error(runs, judge, message):
  corpus, root = runs
  config = make_config(corpus, eval__suite="samples", eval__judge=str(root / judge))
  with pytest.raises(UserError, match=message):
    modes.main(config, root / "md4", "eval", reference=reference())
