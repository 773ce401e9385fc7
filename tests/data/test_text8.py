"""text8.prepare / load on a small fixture zip (the real 100M-character file is never needed)."""

import json
import zipfile

import numpy as np
import pytest

from md4_jax.data import text8
from md4_jax.data.tokenizers import TEXT8_ALPHABET, CharTokenizer
from md4_jax.errors import UserError

SIZES = (900, 50, 50)


def make_text(num_chars: int, seed: int = 0) -> str:
  ids = np.random.default_rng(seed).integers(0, len(TEXT8_ALPHABET), num_chars)
  return "".join(TEXT8_ALPHABET[i] for i in ids)


def make_zip(directory, text: str, member: str = "text8"):
  directory.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(directory / "text8.zip", "w", zipfile.ZIP_DEFLATED) as archive:
    archive.writestr(member, text.encode("latin-1"))
  return directory


def test_prepare_writes_exact_splits_and_load_maps_them(tmp_path):
  text = make_text(sum(SIZES))
  manual = make_zip(tmp_path / "manual", text)
  out_dir = text8.prepare(tmp_path / "data", str(manual), split_sizes=SIZES)
  assert out_dir == tmp_path / "data" / "text8"
  meta = json.loads((out_dir / "meta.json").read_text())
  assert meta == {"source": "text8", "splits": {"train": 900, "validation": 50, "test": 50},
                  "tokenizer": {"kind": "char", "alphabet": TEXT8_ALPHABET}}
  splits = text8.load(tmp_path / "data")
  tokenizer = CharTokenizer(TEXT8_ALPHABET)
  assert {name: tokenizer.decode(ids) for name, ids in splits.items()} == {
      "train": text[:900], "validation": text[900:950], "test": text[950:]}
  assert all(isinstance(ids, np.memmap) and ids.dtype == np.uint8 for ids in splits.values())
  assert splits["train"][0] == TEXT8_ALPHABET.index(text[0])  # space 0, a 1, ..., z 26
  assert not list(out_dir.glob("*.tmp"))


def test_encode_uses_the_alphabet_order():
  assert text8.encode(b" az").tolist() == [0, 1, 26]


def test_second_prepare_does_not_rewrite(tmp_path):
  manual = make_zip(tmp_path / "manual", make_text(sum(SIZES)))
  out_dir = text8.prepare(tmp_path / "data", str(manual), split_sizes=SIZES)
  mtimes = {path.name: path.stat().st_mtime_ns for path in out_dir.iterdir()}
  (manual / "text8.zip").unlink()  # a rewrite would now fail: proves nothing is read again
  assert text8.prepare(tmp_path / "data", str(manual), split_sizes=SIZES) == out_dir
  assert {path.name: path.stat().st_mtime_ns for path in out_dir.iterdir()} == mtimes


def test_bad_characters_are_named(tmp_path):
  text = make_text(sum(SIZES))
  manual = make_zip(tmp_path / "manual", text[:100] + "A" + text[101:-1] + "!")
  with pytest.raises(UserError, match=r"only a-z and spaces.*2 bytes.*\[33, 65\].*offset 100"):
    text8.prepare(tmp_path / "data", str(manual), split_sizes=SIZES)
  assert not (tmp_path / "data" / "text8" / "meta.json").exists()


def test_wrong_length_is_an_error(tmp_path):
  manual = make_zip(tmp_path / "manual", make_text(999))
  with pytest.raises(UserError, match="999 characters, expected 1,000"):
    text8.prepare(tmp_path / "data", str(manual), split_sizes=SIZES)


def test_missing_member_is_an_error(tmp_path):
  manual = make_zip(tmp_path / "manual", make_text(sum(SIZES)), member="other")
  with pytest.raises(UserError, match="no member 'text8'"):
    text8.prepare(tmp_path / "data", str(manual), split_sizes=SIZES)


def test_missing_manual_zip_names_the_path(tmp_path):
  with pytest.raises(UserError) as error:
    text8.prepare(tmp_path / "data", str(tmp_path / "nowhere"), split_sizes=SIZES)
  assert str(tmp_path / "nowhere" / "text8.zip") in str(error.value)


def test_changed_split_sizes_prepare_again(tmp_path):
  manual = make_zip(tmp_path / "manual", make_text(sum(SIZES)))
  text8.prepare(tmp_path / "data", str(manual), split_sizes=SIZES)
  text8.prepare(tmp_path / "data", str(manual), split_sizes=(800, 100, 100))
  assert {name: len(ids) for name, ids in text8.load(tmp_path / "data").items()} == {
      "train": 800, "validation": 100, "test": 100}


def test_load_before_prepare_says_how(tmp_path):
  with pytest.raises(UserError, match="--mode prepare"):
    text8.load(tmp_path / "data")


def test_load_detects_a_damaged_split(tmp_path):
  manual = make_zip(tmp_path / "manual", make_text(sum(SIZES)))
  out_dir = text8.prepare(tmp_path / "data", str(manual), split_sizes=SIZES)
  (out_dir / "validation.npy").unlink()
  with pytest.raises(UserError, match="validation.npy is missing or damaged"):
    text8.load(tmp_path / "data")
