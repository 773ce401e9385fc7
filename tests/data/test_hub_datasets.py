"""Hub datasets (OpenWebText, FineWeb-Edu, LM1B): packing, shards, the held-out rule, meta.json, errors; no network."""

import gzip
import hashlib
import importlib.util
import json
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle

from md4_jax.data import hub_datasets, records, tokenizers
from md4_jax.errors import UserError

SEQ_LEN = 16


class ByteTokenizer:
  """Stand-in tokenizer: UTF-8 bytes, eos 256."""

  eos_id, vocab_size = 256, 257

  def encode(self, text):
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

  def to_json(self):
    return {"kind": "byte"}


def held_out(text: str) -> bool:
  """The documented rule, computed here independently of the module."""
  return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % 1000 < 5


def fixture_texts() -> list[list[str]]:
  """Three shards' documents (~50): ordinary short texts plus three crafted to fall in validation."""
  validation = [t for t in (f"held-out candidate number {i}, long enough" for i in range(20000)) if held_out(t)][:3]
  ordinary = [f"document {i}: " + "word " * (i % 7) for i in range(48)]
  ordinary = [t for t in ordinary if not held_out(t)]
  # "" is skipped by prepare; validation documents are spread over the shards
  return [ordinary[:20] + [validation[0], ""], ordinary[20:35] + [validation[1]], ordinary[35:] + [validation[2]]]


def write_shards(directory, texts_per_shard):
  directory.mkdir(parents=True)
  first, second, third = texts_per_shard
  pq.write_table(pa.table({"text": first, "id": list(range(len(first)))}), directory / "a_000.parquet",
                 row_group_size=5)  # several record batches per file
  pq.write_table(pa.table({"text": second}), directory / "b_001.parquet")
  with gzip.open(directory / "c_002.jsonl.gz", "wt", encoding="utf-8") as out:
    for text in third:
      out.write(json.dumps({"text": text, "url": "x"}) + "\n")


def packed(texts, held: bool) -> np.ndarray:
  """The expected split stream: each document's bytes + eos, concatenated, cut to whole rows."""
  ids = [np.append(ByteTokenizer().encode(t), 256) for t in texts if t and held_out(t) == held]
  stream = np.concatenate(ids)
  return stream[: len(stream) // SEQ_LEN * SEQ_LEN], len(stream) % SEQ_LEN, len(ids)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("hub")
  texts = fixture_texts()
  write_shards(root / "shards", texts)
  out_dir = hub_datasets.prepare("openwebtext", root / "data", tokenizer=ByteTokenizer(), seq_len=SEQ_LEN,
                                 manual_dir=str(root / "shards"))
  return root, out_dir, [t for shard in texts for t in shard]


def rows_of(source) -> np.ndarray:
  return np.stack([source[i]["tokens"] for i in range(len(source))])


def test_rows_are_the_documents_packed_in_order(prepared):
  root, out_dir, texts = prepared
  assert out_dir == root / "data/openwebtext/seq16"
  splits, meta = hub_datasets.load("openwebtext", root / "data", seq_len=SEQ_LEN)
  for split, held in (("train", False), ("validation", True)):
    rows_NxL = rows_of(splits[split])
    expected, tail, num_docs = packed(texts, held)
    assert rows_NxL.dtype == np.int32 and rows_NxL.shape == (len(expected) // SEQ_LEN, SEQ_LEN)
    np.testing.assert_array_equal(rows_NxL.reshape(-1), expected)
    assert meta["rows_per_split"][split] == len(rows_NxL)
    assert meta["tokens_per_split"][split] == len(expected)
    assert meta["dropped_tail_tokens_per_split"][split] == tail
    assert meta["documents_per_split"][split] == num_docs
  assert meta["documents_per_split"]["validation"] == 3  # the fixture really exercises the held-out split
  assert meta["shards"] == ["a_000.parquet", "b_001.parquet", "c_002.jsonl.gz"]
  assert (meta["source"], meta["subset"], meta["seq_len"], meta["tokenizer"]) == ("openwebtext", "", 16, {"kind": "byte"})
  assert json.loads((out_dir / "meta.json").read_text()) == meta


def test_a_split_spans_many_shards_in_stream_order_without_tfds_shuffle_buffers(prepared, tmp_path, monkeypatch):
  """Gigabyte splits in miniature: shards of 3 rows, and tfds's shuffle buffer cut from 1 GB to 1 KB.

  A writer going through tfds's shuffler would spill its buffer through tf.io.gfile here and fail for
  want of TensorFlow, as OpenWebText did at 1 GB.
  """
  root, _, texts = prepared
  monkeypatch.setattr(records, "SHARD_BYTES", 3 * SEQ_LEN * 4)  # 3 rows of int32 tokens
  monkeypatch.setattr(tfds_shuffle, "MAX_MEM_BUFFER_SIZE", 1024)
  out_dir = hub_datasets.prepare("openwebtext", tmp_path / "data", tokenizer=ByteTokenizer(), seq_len=SEQ_LEN,
                                 manual_dir=str(root / "shards"))
  splits, meta = hub_datasets.load("openwebtext", tmp_path / "data", seq_len=SEQ_LEN)
  for split, held in (("train", False), ("validation", True)):
    expected, tail, _ = packed(texts, held)
    num_rows = len(expected) // SEQ_LEN
    shards = sorted((out_dir / "packed_tokens/1.0.0").glob(f"packed_tokens-{split}.array_record-*"))
    lengths = splits[split].dataset_info.splits[split].shard_lengths
    assert len(shards) == len(lengths) == -(-num_rows // 3) >= {"train": 10, "validation": 2}[split]
    assert set(lengths[:-1]) == {3} and sum(lengths) == num_rows
    rows_NxL = rows_of(splits[split])
    assert rows_NxL.dtype == np.int32 and rows_NxL.shape == (num_rows, SEQ_LEN)
    np.testing.assert_array_equal(rows_NxL.reshape(-1), expected)  # in order across every shard boundary
    assert (meta["rows_per_split"][split], meta["dropped_tail_tokens_per_split"][split]) == (num_rows, tail)
  assert not list(out_dir.rglob("*.tmp"))


def test_prepare_goes_through_no_tfds_builder(prepared, tmp_path, monkeypatch):
  """tfds builders send rows through the shuffler (see above); prepare must not define or call one."""
  def refuse(*args, **kwargs):
    raise AssertionError("prepare called a tfds builder's download_and_prepare")

  for builder_class in (tfds.core.DatasetBuilder, tfds.core.GeneratorBasedBuilder):
    monkeypatch.setattr(builder_class, "download_and_prepare", refuse)
  root, _, _ = prepared
  hub_datasets.prepare("openwebtext", tmp_path / "data", tokenizer=ByteTokenizer(), seq_len=SEQ_LEN,
                       manual_dir=str(root / "shards"))
  assert len(hub_datasets.load("openwebtext", tmp_path / "data", seq_len=SEQ_LEN)[0]["train"]) > 0
  assert not [value for value in vars(hub_datasets).values()
              if isinstance(value, type) and issubclass(value, tfds.core.DatasetBuilder)]


def test_a_split_too_short_for_one_row_is_a_clear_error_and_leaves_nothing(prepared, tmp_path):
  """Train fills rows of 200 tokens, validation (3 short documents) does not: the train shards are removed too."""
  root, _, _ = prepared
  with pytest.raises(UserError, match=r"the validation split got \d+ tokens from 3 documents, fewer than one row"):
    hub_datasets.prepare("openwebtext", tmp_path / "data", tokenizer=ByteTokenizer(), seq_len=200,
                         manual_dir=str(root / "shards"))
  assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]


def test_held_out_rule_is_the_documented_hash():
  texts = [f"text {i}" for i in range(3000)]
  assert [hub_datasets.is_held_out(t) for t in texts] == [held_out(t) for t in texts]
  assert 5 <= sum(map(held_out, texts)) <= 30  # about 0.5%


def test_prepare_again_returns_at_once_and_refuses_a_different_tokenizer(prepared, monkeypatch):
  root, out_dir, _ = prepared
  before = (out_dir / "meta.json").read_text()
  monkeypatch.setattr(records, "write", None)  # any rebuild would fail
  assert hub_datasets.prepare("openwebtext", root / "data", tokenizer=ByteTokenizer(), seq_len=SEQ_LEN,
                              manual_dir=str(root / "shards")) == out_dir
  assert (out_dir / "meta.json").read_text() == before

  class OtherTokenizer(ByteTokenizer):
    def to_json(self):
      return {"kind": "other"}

  with pytest.raises(UserError, match="different tokenizer"):
    hub_datasets.prepare("openwebtext", root / "data", tokenizer=OtherTokenizer(), seq_len=SEQ_LEN,
                         manual_dir=str(root / "shards"))


def test_max_documents_takes_the_first_documents_in_shard_order(prepared):
  root, _, texts = prepared
  out_dir = hub_datasets.prepare("fineweb_edu", root / "small", tokenizer=ByteTokenizer(), seq_len=SEQ_LEN,
                                 manual_dir=str(root / "shards"), max_documents=40)
  assert out_dir == root / "small/fineweb_edu/sample-10BT/seq16"
  meta = json.loads((out_dir / "meta.json").read_text())
  first_40 = [t for t in texts if t][:40]
  assert meta["documents_per_split"] == {"train": sum(not held_out(t) for t in first_40),
                                         "validation": sum(map(held_out, first_40))}
  splits, _ = hub_datasets.load("fineweb_edu", root / "small", seq_len=SEQ_LEN, subset="sample-10BT")
  np.testing.assert_array_equal(rows_of(splits["train"]).reshape(-1), packed(first_40, False)[0])


def test_missing_or_empty_manual_dir_is_a_clear_error(tmp_path):
  with pytest.raises(UserError, match="nowhere.*not a directory"):
    hub_datasets.prepare("openwebtext", tmp_path / "data", tokenizer=ByteTokenizer(), manual_dir=str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty/notes.txt").write_text("not a shard")
  with pytest.raises(UserError, match=r"no shards in .*empty.*\*\.parquet"):
    hub_datasets.prepare("openwebtext", tmp_path / "data", tokenizer=ByteTokenizer(), manual_dir=str(tmp_path / "empty"))


def test_a_shard_without_text_is_a_clear_error(tmp_path):
  (tmp_path / "shards").mkdir()
  pq.write_table(pa.table({"content": ["a"]}), tmp_path / "shards/x.parquet")
  with pytest.raises(UserError, match="x.parquet has no 'text' column"):
    hub_datasets.prepare("openwebtext", tmp_path / "data", tokenizer=ByteTokenizer(), manual_dir=str(tmp_path / "shards"))


def test_a_tokenizer_without_end_of_text_is_refused(tmp_path):
  with pytest.raises(UserError, match="end-of-text.*data.tokenizer='gpt2'"):
    hub_datasets.prepare("openwebtext", tmp_path / "data", tokenizer=tokenizers.ByteTokenizer(),
                         manual_dir=str(tmp_path))


@pytest.mark.usefixtures("offline_dns")
def test_offline_prepare_fails_within_seconds_naming_manual_dir(tmp_path):
  start = time.monotonic()
  with pytest.raises(UserError, match="huggingface.co.*sample/10BT.*--config.data.manual_dir=DIR"):
    hub_datasets.prepare("fineweb_edu", tmp_path / "data", tokenizer=ByteTokenizer())
  assert time.monotonic() - start < 5
  assert not (tmp_path / "data/fineweb_edu/sample-10BT/seq1024/meta.json").exists()


def test_load_before_prepare_says_how_to_prepare(tmp_path):
  with pytest.raises(UserError, match="--mode prepare"):
    hub_datasets.load("openwebtext", tmp_path, seq_len=SEQ_LEN)


def test_unknown_source_or_subset(tmp_path):
  with pytest.raises(UserError, match="not a hub dataset"):
    hub_datasets.load("wikipedia", tmp_path, seq_len=SEQ_LEN)
  with pytest.raises(UserError, match="not a subset of openwebtext"):
    hub_datasets.load("openwebtext", tmp_path, seq_len=SEQ_LEN, subset="sample-10BT")


def test_no_tensorflow_is_used(prepared):
  root, _, _ = prepared
  splits, _ = hub_datasets.load("openwebtext", root / "data", seq_len=SEQ_LEN)
  assert splits["train"][0]["tokens"].shape == (SEQ_LEN,)
  assert "tensorflow" not in sys.modules
  assert importlib.util.find_spec("tensorflow") is None  # not installed, so nothing above could have used it


def test_lm1b_detokenizer():
  from md4_jax.data.lm1b_text import detokenize  # noqa: PLC0415

  assert detokenize('He said : " I do n\'t know . "\n') == 'He said: "I don\'t know."'
  assert detokenize("It 's ( really ) $ 5 or 10 % , state - of - the - art .") == \
      "It's (really) $5 or 10%, state-of-the-art."


def test_lm1b_prepare_packs_train_and_the_official_heldout_file(tmp_path):
  from md4_jax.data import lm1b_text  # noqa: PLC0415

  root = tmp_path / "raw" / lm1b_text.TOP
  train_dir, heldout_dir = root / "training-monolingual.tokenized.shuffled", root / "heldout-monolingual.tokenized.shuffled"
  train_dir.mkdir(parents=True)
  heldout_dir.mkdir(parents=True)
  train = [f"Sentence number {i} is n't short ." for i in range(30)]
  heldout = [f"Held out line {i} , really ." for i in range(12)]
  (train_dir / "news.en-00001-of-00100").write_text("\n".join(train[:15]) + "\n")
  (train_dir / "news.en-00002-of-00100").write_text("\n".join(train[15:]) + "\n")
  (heldout_dir / "news.en.heldout-00000-of-00050").write_text("\n".join(heldout) + "\n")
  (heldout_dir / "news.en.heldout-00001-of-00050").write_text("Not the test file .\n")  # must be ignored
  hub_datasets.prepare("lm1b", tmp_path / "data", tokenizer=ByteTokenizer(), seq_len=SEQ_LEN,
                       manual_dir=str(tmp_path / "raw"))
  splits, meta = hub_datasets.load("lm1b", tmp_path / "data", seq_len=SEQ_LEN)

  def expected(sentences):
    stream = np.concatenate([np.append(ByteTokenizer().encode(lm1b_text.detokenize(s)), 256) for s in sentences])
    return stream[: len(stream) // SEQ_LEN * SEQ_LEN]

  for split, sentences in (("train", train), ("validation", heldout)):
    rows = np.concatenate([np.asarray(splits[split][i]["tokens"]) for i in range(len(splits[split]))])
    np.testing.assert_array_equal(rows, expected(sentences))
  assert meta["documents_per_split"] == {"train": 30, "validation": 12}


def test_lm1b_without_files_says_where_to_get_them(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="manual_dir"):
    hub_datasets.prepare("lm1b", tmp_path / "data", tokenizer=ByteTokenizer(), seq_len=SEQ_LEN,
                         manual_dir=str(tmp_path / "empty"))
