"""Corpora normalisation, the character tokenizer and the batch pipeline."""

import numpy as np
import pytest

from md4_jax.data import corpora, modality, pipeline
from md4_jax.data.tokenizers import TEXT8_ALPHABET, CharTokenizer
from md4_jax.errors import UserError
from tests.conftest import reference


def test_wikitext_is_normalised_the_text8_way():
  wikitext = ("'''Anarchism''' is a [[political philosophy]] of [[self-governance|self-governed]] "
              "societies.<ref>Woodcock, p. 12</ref> {{cite|x={{y}}}} In 1840 &amp; later "
              "[[Category:Politics]] [http://example.com a link].")
  assert corpora.normalize_wikitext(wikitext) == (
      "anarchism is a political philosophy of self governed societies in one eight four zero later a link")


def test_dump_skips_redirects_and_markup_outside_text():
  xml = ("<page><title>A</title><text xml:space=\"preserve\">#REDIRECT [[B]]</text></page>"
         "<page><title>B</title><text>Hello World!</text></page>")
  assert corpora.normalize_wiki_dump(xml) == "hello world"


def test_embedded_corpus_is_real_english_text8():
  text = corpora.embedded_wikipedia()
  assert len(text) > 2_500_000
  assert set(text) == set(TEXT8_ALPHABET)
  assert "  " not in text
  assert " the " in text[:10_000]


def test_char_tokenizer_round_trip_and_save(tmp_path):
  tokenizer = CharTokenizer.from_text("hello world")
  assert tokenizer.alphabet == " dehlorw"
  ids = tokenizer.encode("world hello")
  assert ids.dtype == np.int32 and tokenizer.decode(ids) == "world hello"
  assert tokenizer.decode([0, len(tokenizer.alphabet)]) == " _"  # the mask id prints as "_"
  tokenizer.save(tmp_path / "tok.json")
  assert CharTokenizer.load(tmp_path / "tok.json") == tokenizer
  with pytest.raises(UserError, match="not in the tokenizer"):
    tokenizer.encode("hex!")


def data_config(**overrides):
  config = reference().data
  config.update({"source": "textfile", "seq_len": 8, "eval_fraction": 0.2, **overrides})
  return config


def stream(rows) -> np.ndarray:
  """The real tokens of a row collection, in order."""
  return np.concatenate([rows[i]["tokens"][rows[i]["token_mask"] == 1] for i in range(len(rows))])


def test_textfile_splits_from_the_end_and_builds_vocab_from_train(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text("abcabcabcabcabcabcabcabcabcabcabcabcabcabcxyz", encoding="utf-8")  # 45 chars
  data = pipeline.load_data(data_config(path=str(path)))
  assert data.tokenizer.alphabet == "abc"
  # 36 training characters -> 4 full rows of 8; training drops the partial tail row.
  assert data.tokenizer.decode(stream(data.train)) == ("abc" * 12)[:32]
  assert data.tokenizer.decode(stream(data.eval)) == "abcabc"  # 'xyz' is unseen in training: dropped


def test_textfile_reuses_a_saved_tokenizer(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text("ab" * 40, encoding="utf-8")
  data = pipeline.load_data(data_config(path=str(path)), saved_modality=modality.Text.of(CharTokenizer("abc"), 8))
  assert data.tokenizer.alphabet == "abc"


@pytest.mark.parametrize("content, message", [(None, "does not exist"), ("", "is empty"), ("  \n", "is empty"),
                                              ("abc", "fewer tokens than one sequence")])
def test_bad_text_files(tmp_path, content, message):
  path = tmp_path / "corpus.txt"
  if content is not None:
    path.write_text(content)
  with pytest.raises(UserError, match=message):
    pipeline.load_data(data_config(path=str(path)))


def test_missing_path_and_bad_encoding(tmp_path):
  with pytest.raises(UserError, match="needs a file"):
    pipeline.load_data(data_config(path=""))
  path = tmp_path / "latin1.txt"
  path.write_bytes("caf\xe9 ".encode("latin-1") * 20)
  with pytest.raises(UserError, match="not valid UTF-8"):
    pipeline.load_data(data_config(path=str(path)))


def test_train_batches_are_deterministic_resumable_and_reshuffled():
  rows = pipeline.StreamRows(np.arange(10 * 4, dtype=np.int32), seq_len=4)  # 10 rows of length 4
  dataset = pipeline.train_dataset(rows, global_batch_size=3, seed=7)
  iterator = iter(dataset.to_iter_dataset())
  first = [next(iterator)["tokens"] for _ in range(4)]
  state = iterator.get_state()
  after = [next(iterator)["tokens"] for _ in range(4)]
  resumed = iter(dataset.to_iter_dataset())
  resumed.set_state(state)
  for expected in after:
    np.testing.assert_array_equal(next(resumed)["tokens"], expected)
  order = np.concatenate(first + after)[:, 0] // 4  # row indices in the order they were served
  # Each epoch (10 consecutive rows) is a permutation of all rows, and the second is reshuffled.
  assert sorted(order[:10].tolist()) == list(range(10)) == sorted(order[10:20].tolist())
  assert order[:10].tolist() != order[10:20].tolist()
  other_seed = iter(pipeline.train_dataset(rows, 3, seed=8).to_iter_dataset())
  assert not np.array_equal(next(other_seed)["tokens"], first[0])


def test_dataset_smaller_than_a_batch_repeats():
  rows = pipeline.StreamRows(np.arange(2 * 4 + 3, dtype=np.int32), seq_len=4)  # 2 full rows (tail dropped), batch of 5
  batch = next(iter(pipeline.train_dataset(rows, 5, seed=0).to_iter_dataset()))
  assert batch["tokens"].shape == (5, 4)
  assert set((batch["tokens"][:, 0] // 4).tolist()) == {0, 1}


def test_eval_batches_count_every_token_once():
  tokens = np.arange(1, 24, dtype=np.int32)  # 23 tokens, rows of 5 -> 5 rows (last has 3), batches of 2
  rows = pipeline.StreamRows(tokens, seq_len=5, pad_last=True)
  batches = list(pipeline.eval_batches(rows, batch_size=2))
  assert len(batches) == 3
  real = np.concatenate([b["tokens"][b["token_mask"] == 1] for b in batches])
  np.testing.assert_array_equal(real, tokens)
  assert sum(int(b["token_mask"].sum()) for b in batches) == 23
  limited = list(pipeline.eval_batches(rows, batch_size=2, max_rows=3))
  assert sum(int(b["token_mask"].sum()) for b in limited) == 15
