"""Tokenizers: exact GPT-2 ids, byte and char behaviour, saving and loading, and their errors."""

import base64
import json
import shutil
import socket

import numpy as np
import pytest

from md4_jax.data import shipped, tokenizers
from md4_jax.data.tokenizers import ByteTokenizer, CharTokenizer, Gpt2Tokenizer
from md4_jax.errors import UserError

UNICODE_SENTENCE = "Grüße aus Köln: naïve café, 東京 and 🙂 emoji.\n  It's   spaced."


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Any attempt to connect fails the test: tokenizers must work offline."""
  def refuse(*args, **kwargs):
    raise AssertionError("a tokenizer tried to use the network")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def real_bpe():
  """GPT-2's real ranks file: the copy that ships with the package."""
  return tokenizers.find_gpt2_bpe()


@pytest.fixture
def fake_bpe(tmp_path):
  """A ranks file shaped like GPT-2's (50256 ranks) but made up, so file handling is tested without the real one."""
  tokens = [bytes([b]) for b in range(256)] + [b"tok%05d" % i for i in range(50256 - 256)]
  path = tmp_path / "fake.tiktoken"
  path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % rank for rank, t in enumerate(tokens)))
  return path


def test_gpt2_gives_gpt2s_exact_ids(real_bpe):
  tokenizer = tokenizers.make_tokenizer("gpt2", bpe_path=str(real_bpe))
  assert (tokenizer.name, tokenizer.vocab_size, tokenizer.eos_id) == ("gpt2", 50257, 50256)
  assert tokenizer.to_json()["sha256"] == tokenizers.GPT2_BPE_SHA256  # the file the error messages point to
  ids = tokenizer.encode("Hello world")
  assert ids.dtype == np.int32 and ids.tolist() == [15496, 995]
  assert tokenizer.encode("a<|endoftext|>b").tolist() == [64, 50256, 65]
  assert tokenizer.decode([15496, 50257, 995]) == "Hello[MASK] world"


def test_gpt2_round_trips_unicode(real_bpe):
  tokenizer = tokenizers.make_tokenizer("gpt2")  # found without a path, as the launcher does
  ids = tokenizer.encode(UNICODE_SENTENCE)
  assert len(ids) < len(UNICODE_SENTENCE.encode("utf-8"))  # merges happened: not one id per byte
  assert tokenizer.decode(ids) == UNICODE_SENTENCE


def test_the_default_bpe_file_is_the_shipped_copy_of_gpt2s(real_bpe):
  assert real_bpe == shipped.path("gpt2.tiktoken") and real_bpe.is_file()
  assert tokenizers.download.sha256_of(real_bpe) == tokenizers.GPT2_BPE_SHA256


def test_a_damaged_shipped_bpe_file_is_named_with_the_fix(tmp_path, monkeypatch):
  damaged = tmp_path / "assets"
  damaged.mkdir()
  (damaged / "gpt2.tiktoken").write_bytes(shipped.path("gpt2.tiktoken").read_bytes()[:-100])  # cut short
  monkeypatch.setattr(shipped, "ASSETS", damaged)
  shipped.read_bytes.cache_clear()
  try:
    with pytest.raises(UserError, match="ships with md4-jax, is damaged.*reinstall"):
      tokenizers.make_tokenizer("gpt2")
    (damaged / "gpt2.tiktoken").unlink()
    with pytest.raises(UserError, match="ships with md4-jax, cannot be read.*pip install -e ."):
      tokenizers.make_tokenizer("gpt2")
  finally:
    shipped.read_bytes.cache_clear()


def test_a_saved_gpt2_tokenizer_whose_file_moved_reads_the_shipped_copy(tmp_path, real_bpe):
  """Workdirs trained before the file shipped recorded mlx-whisper's copy; a rebuilt venv drops it."""
  old_copy = tmp_path / "mlx_whisper" / "assets" / "gpt2.tiktoken"
  old_copy.parent.mkdir(parents=True)
  shutil.copy(real_bpe, old_copy)
  tokenizers.save_tokenizer(Gpt2Tokenizer(old_copy), tmp_path / "tok.json")
  old_copy.unlink()
  loaded = tokenizers.load_tokenizer(tmp_path / "tok.json")
  assert loaded.bpe_path == real_bpe and loaded.encode("Hello world").tolist() == [15496, 995]


def test_byte_tokenizer_round_trips_any_text():
  tokenizer = tokenizers.make_tokenizer("byte")
  assert (tokenizer.name, tokenizer.vocab_size, tokenizer.eos_id) == ("byte", 256, None)
  ids = tokenizer.encode(UNICODE_SENTENCE)
  assert ids.dtype == np.int32 and ids.tolist() == list(UNICODE_SENTENCE.encode("utf-8"))
  assert tokenizer.decode(ids) == UNICODE_SENTENCE
  assert tokenizer.decode([104, 256, 105]) == "h_i"  # the mask id
  assert tokenizer.decode([0xC3]) == "\ufffd"  # half a character, as a sampler may produce
  assert tokenizer.decode(tokenizer.encode("é").tolist() + [256]) == "é_"
  with pytest.raises(ValueError, match="outside"):
    tokenizer.decode([257])


def test_char_tokenizer():
  tokenizer = tokenizers.make_tokenizer("char", alphabet="abc ")
  assert (tokenizer.name, tokenizer.vocab_size, tokenizer.eos_id) == ("char", 4, None)
  assert tokenizer.encode("cab a").tolist() == [2, 0, 1, 3, 0]
  assert tokenizer.decode([2, 4, 0]) == "c_a"
  assert tokenizer.to_json() == {"kind": "char", "alphabet": "abc "}
  with pytest.raises(UserError, match="not in the tokenizer"):
    tokenizer.encode("abd")
  with pytest.raises(UserError, match="alphabet"):
    tokenizers.make_tokenizer("char")


def test_save_and_load_round_trip_every_kind(tmp_path, fake_bpe):
  for tokenizer in (CharTokenizer(tokenizers.TEXT8_ALPHABET), ByteTokenizer(), Gpt2Tokenizer(fake_bpe)):
    path = tmp_path / f"{tokenizer.name}.json"
    tokenizers.save_tokenizer(tokenizer, path)
    assert json.loads(path.read_text())["kind"] == tokenizer.name
    loaded = tokenizers.load_tokenizer(path)
    assert type(loaded) is type(tokenizer) and loaded == tokenizer
    assert loaded.to_json() == tokenizer.to_json()
    text = "hello world"
    assert loaded.encode(text).tolist() == tokenizer.encode(text).tolist()
    assert loaded.decode(loaded.encode(text)) == text


def test_char_tokenizer_keeps_its_file_format(tmp_path):
  (tmp_path / "tok.json").write_text('{"kind": "char", "alphabet": "xy"}')  # as older runs wrote it
  assert CharTokenizer.load(tmp_path / "tok.json") == CharTokenizer("xy")
  tokenizers.save_tokenizer(ByteTokenizer(), tmp_path / "byte.json")
  with pytest.raises(UserError, match="not a char tokenizer"):
    CharTokenizer.load(tmp_path / "byte.json")


def test_gpt2_json_records_path_and_hash_and_rejects_a_changed_file(tmp_path, fake_bpe):
  tokenizers.save_tokenizer(Gpt2Tokenizer(fake_bpe), tmp_path / "tok.json")
  spec = json.loads((tmp_path / "tok.json").read_text())
  assert spec["bpe_path"] == str(fake_bpe.resolve()) and len(spec["sha256"]) == 64
  fake_bpe.write_bytes(fake_bpe.read_bytes().replace(b" 50255\n", b" 50255\n\n"))  # same ranks, other bytes
  with pytest.raises(UserError, match=f"{fake_bpe.name} has sha256 .* saved with {spec['sha256']}"):
    tokenizers.load_tokenizer(tmp_path / "tok.json")


def test_gpt2_json_names_a_missing_file_and_the_fix(tmp_path, fake_bpe):
  tokenizers.save_tokenizer(Gpt2Tokenizer(fake_bpe), tmp_path / "tok.json")
  fake_bpe.unlink()
  with pytest.raises(UserError, match="leave data.tokenizer_path empty") as error:
    tokenizers.load_tokenizer(tmp_path / "tok.json")  # not GPT-2's ranks: the shipped copy is no stand-in
  assert str(fake_bpe.resolve()) in str(error.value) and "does not exist" in str(error.value)


def test_a_missing_bpe_file_says_how_to_get_one(tmp_path):
  with pytest.raises(UserError) as error:
    tokenizers.make_tokenizer("gpt2", bpe_path=str(tmp_path / "gone.tiktoken"))
  message = str(error.value)
  assert "leave data.tokenizer_path empty" in message and str(shipped.path("gpt2.tiktoken")) in message
  assert "--config.data.tokenizer_path=FILE" in message
  assert "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken" in message


def test_explicit_bpe_path(tmp_path, fake_bpe):
  assert tokenizers.find_gpt2_bpe(str(fake_bpe)) == fake_bpe
  with pytest.raises(UserError, match="nothing.tiktoken.*ships with md4-jax"):
    tokenizers.find_gpt2_bpe(str(tmp_path / "nothing.tiktoken"))
  (tmp_path / "small.tiktoken").write_bytes(base64.b64encode(b"a") + b" 0\n")
  with pytest.raises(UserError, match="not GPT-2's BPE ranks"):
    tokenizers.make_tokenizer("gpt2", bpe_path=str(tmp_path / "small.tiktoken"))


def test_unknown_names_are_errors_listing_the_choices(tmp_path):
  with pytest.raises(UserError, match="'char', 'byte', 'gpt2'"):
    tokenizers.make_tokenizer("sentencepiece")
  with pytest.raises(UserError, match=r"must be one of \('char', 'byte', 'gpt2', 'hf'\)"):
    tokenizers.tokenizer_from_json({"kind": "wordpiece"})
  (tmp_path / "bad.json").write_text("not json")
  with pytest.raises(UserError, match="bad.json"):
    tokenizers.load_tokenizer(tmp_path / "bad.json")
