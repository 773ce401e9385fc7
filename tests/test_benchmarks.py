"""Zero-shot benchmarks: the real loaders on fixture files in each release's format; never the network."""

import dataclasses
import hashlib
import io
import json
import tarfile
import time
import zipfile

import numpy as np
import pytest

from md4_jax.data import detokenizers, lm1b_text, zero_shot_sets
from md4_jax.errors import UserError


class EosByteTokenizer:
  """Stand-in tokenizer: UTF-8 bytes, end-of-text 256."""

  name, eos_id, vocab_size = "bytes_eos", 256, 257

  def encode(self, text):
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

  def to_json(self):
    return {"kind": "bytes_eos"}


LAMBADA = ["  \N{LEFT DOUBLE QUOTATION MARK}Go,\N{RIGHT DOUBLE QUOTATION MARK} she said to the dog, and it ran down the "
           "long road past the old mill towards the river \n",
           "He opened the box, looked inside for a long while, and then handed it back to his sister without a word"]
WIKI_TEST = [" = Robert Boulter = \n", "\n", " Robert Boulter is an English film , television and theatre actor . \n",
             "\n", " He had a 1 @,@ 000 @-@ seat hall ( the Old Vic ) . \n"]
PTB = [" no it was n't black monday \n", " the N N companies ' shares rose $ N in new york trading \n",
       " <unk> said the market was n't ready for the news \n", " but analysts expect N more deals this year \n"]
LM1B_HELDOUT = {"news.en.heldout-00000-of-00050": ["It 's here , said the man at the door .", "Why did they go ?"],
                "news.en.heldout-00001-of-00050": ["See http : / / a.com , ok .", "The ( small ) team won again ."]}


def _write_zip(path, member, lines):
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr(member, "".join(lines))
    archive.writestr(member.replace("test", "train"), " = Not the test split = \n")  # must be ignored


def _write_lm1b(path):
  with tarfile.open(path, "w:gz") as archive:
    def add(name, text):
      data = text.encode("utf-8")
      info = tarfile.TarInfo(f"{lm1b_text.TOP}/{name}")
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))

    for name in sorted(LM1B_HELDOUT, reverse=True):  # archive order is not name order
      add(f"heldout-monolingual.tokenized.shuffled/{name}", "".join(line + "\n" for line in LM1B_HELDOUT[name]))
    add("heldout-monolingual.tokenized.shuffled/news.en-00000-of-00100", "Not held out .\n")  # ignored
    add("training-monolingual.tokenized.shuffled/news.en-00001-of-00100", "Training .\n")  # ignored


def write_releases(directory):
  """Fixture release files in `directory`; returns BENCHMARKS entries pointing at them (file:// URLs,
  their checksums and document counts)."""
  directory.mkdir(parents=True)
  (directory / "lambada_test.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in LAMBADA) + "\n")
  _write_zip(directory / "wikitext-2-raw-v1.zip", "wikitext-2-raw/wiki.test.raw", WIKI_TEST)
  _write_zip(directory / "wikitext-103-raw-v1.zip", "wikitext-103-raw/wiki.test.raw", WIKI_TEST)
  (directory / "ptb.test.txt").write_text("".join(PTB))
  _write_lm1b(directory / "lm1b.tar.gz")
  files = {"lambada": "lambada_test.jsonl", "wikitext2": "wikitext-2-raw-v1.zip", "ptb": "ptb.test.txt",
           "wikitext103": "wikitext-103-raw-v1.zip", "lm1b": "lm1b.tar.gz"}
  counts = {"lambada": 2, "wikitext2": 5, "ptb": 4, "wikitext103": 5, "lm1b": 4}
  return {name: dataclasses.replace(zero_shot_sets.BENCHMARKS[name], url=(directory / file).as_uri(),
                                    sha256=hashlib.sha256((directory / file).read_bytes()).hexdigest(),
                                    documents=counts[name])
          for name, file in files.items()}


@pytest.fixture
def releases(tmp_path, monkeypatch):
  """BENCHMARKS pointing at fixture releases; returns the data.dir to prepare into."""
  for name, entry in write_releases(tmp_path / "releases").items():
    monkeypatch.setitem(zero_shot_sets.BENCHMARKS, name, entry)
  return tmp_path / "data"


def expected_stream(records, detokenize):
  tokenizer = EosByteTokenizer()
  return np.concatenate([np.append(tokenizer.encode(detokenize(r)), tokenizer.eos_id) for r in records])


EXPECTED_RECORDS = {  # what each release's test split holds, written out independently of the readers
    "lambada": (LAMBADA, detokenizers.lambada),
    "wikitext2": ([line if line.strip() else "" for line in WIKI_TEST], detokenizers.wikitext),
    "ptb": ([line.strip() for line in PTB], detokenizers.ptb),
    "wikitext103": ([line if line.strip() else "" for line in WIKI_TEST], detokenizers.wikitext),
    "lm1b": (LM1B_HELDOUT["news.en.heldout-00000-of-00050"] + LM1B_HELDOUT["news.en.heldout-00001-of-00050"],
             detokenizers.lm1b),
}


def test_each_benchmark_is_its_documents_detokenized_each_followed_by_eos(releases):
  names = list(zero_shot_sets.BENCHMARKS)
  paths = zero_shot_sets.prepare(names, releases, EosByteTokenizer())
  assert [p.name for p in paths] == [f"{name}.npy" for name in names]
  for name in names:
    stream, meta = zero_shot_sets.load(name, releases, EosByteTokenizer())
    records, detokenize = EXPECTED_RECORDS[name]
    np.testing.assert_array_equal(stream, expected_stream(records, detokenize))
    assert meta["documents"] == len(records) and meta["tokens"] == len(stream)
  wikitext = np.asarray(zero_shot_sets.load("wikitext2", releases, EosByteTokenizer())[0])
  assert wikitext[np.flatnonzero(wikitext == 256)[0] + 1] == 256  # a blank line is an empty document: eos alone
  assert b"(the Old Vic)." in wikitext[wikitext < 256].astype(np.uint8).tobytes()


def test_prepare_is_kept_and_a_changed_release_is_refused(releases, monkeypatch):
  zero_shot_sets.prepare(["ptb"], releases, EosByteTokenizer())
  stream_file = releases / "zero_shot" / "bytes_eos" / "ptb.npy"
  before = stream_file.stat().st_mtime_ns
  zero_shot_sets.prepare(["ptb"], releases, EosByteTokenizer())  # prepared with the same tokenizer: kept
  assert stream_file.stat().st_mtime_ns == before
  entry = zero_shot_sets.BENCHMARKS["lambada"]
  monkeypatch.setitem(zero_shot_sets.BENCHMARKS, "lambada", dataclasses.replace(entry, sha256="0" * 64))
  with pytest.raises(UserError, match="corrupt or changed.*expected 0000"):
    zero_shot_sets.prepare(["lambada"], releases, EosByteTokenizer())
  assert not (releases / "zero_shot" / "downloads" / "lambada_test.jsonl").exists()
  monkeypatch.setitem(zero_shot_sets.BENCHMARKS, "lambada", dataclasses.replace(entry, documents=5153))
  with pytest.raises(UserError, match="gave 2 LAMBADA documents, not the test split's 5153"):
    zero_shot_sets.prepare(["lambada"], releases, EosByteTokenizer())
  assert not (releases / "zero_shot" / "bytes_eos" / "lambada.json").exists()


@pytest.mark.usefixtures("offline_dns")
def test_offline_prepare_fails_within_seconds_naming_where_to_put_the_file(tmp_path):
  start = time.monotonic()
  dest = tmp_path / "zero_shot" / "downloads" / "ptb.test.txt"
  with pytest.raises(UserError, match=f"unreachable.*ptb.test.txt.*put it at {dest}"):
    zero_shot_sets.prepare(["ptb"], tmp_path, EosByteTokenizer())
  assert time.monotonic() - start < 10


def test_load_errors_name_the_fix(releases):
  with pytest.raises(UserError, match="PTB benchmark is not prepared.*--mode prepare --eval.suite=zero_shot"):
    zero_shot_sets.load("ptb", releases, EosByteTokenizer())
  zero_shot_sets.prepare(["ptb"], releases, EosByteTokenizer())

  class OtherTokenizer(EosByteTokenizer):
    def to_json(self):
      return {"kind": "bytes_eos", "version": 2}

  with pytest.raises(UserError, match="prepared with another tokenizer"):
    zero_shot_sets.load("ptb", releases, OtherTokenizer())

  class NoEos(EosByteTokenizer):
    eos_id = None

  with pytest.raises(UserError, match="end-of-text.*data.tokenizer='gpt2'"):
    zero_shot_sets.prepare(["ptb"], releases, NoEos())


def test_benchmark_names_parse_in_md4_column_order():
  assert zero_shot_sets.parse_names(" lm1b,lambada,, ") == ["lambada", "lm1b"]
  for bad in ("", "lambada,wikitext"):
    with pytest.raises(UserError, match="eval.zero_shot=.*lambada, wikitext2, ptb, wikitext103, lm1b"):
      zero_shot_sets.parse_names(bad)
  assert [b.column for b in zero_shot_sets.BENCHMARKS.values()] == ["LAMBADA", "WikiText2", "PTB", "WikiText103", "1BW"]
