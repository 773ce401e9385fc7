"""The `tokens` source: .npy and raw .bin token files, and every mistake they can hold."""

import numpy as np
import pytest

from md4_jax.data import token_files
from md4_jax.errors import UserError


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_npy_round_trip(tmp_path, dtype):
  ids = np.arange(1000, dtype=dtype) % 100
  np.save(tmp_path / "ids.npy", ids)
  tokens = token_files.load_token_file(str(tmp_path / "ids.npy"), vocab_size=100)
  assert isinstance(tokens, np.memmap) and tokens.dtype == dtype
  np.testing.assert_array_equal(tokens, ids)


@pytest.mark.parametrize("dtype", ["", "uint16", "uint32", "int32"])
def test_bin_round_trip(tmp_path, dtype):
  ids = (np.arange(5000) * 7 % 50257).astype(dtype or "uint16")
  ids.tofile(tmp_path / "ids.bin")
  tokens = token_files.load_token_file(str(tmp_path / "ids.bin"), vocab_size=50257, dtype=dtype)
  assert isinstance(tokens, np.memmap) and tokens.dtype == np.dtype(dtype or "uint16")
  np.testing.assert_array_equal(tokens, ids)


def test_range_check_scans_every_chunk(tmp_path, monkeypatch):
  monkeypatch.setattr(token_files, "_CHECK_CHUNK", 64)  # the bad id sits in a late chunk
  ids = np.zeros(1000, np.int32)
  ids[900] = 100
  np.save(tmp_path / "ids.npy", ids)
  with pytest.raises(UserError, match=r"from 0 to 100, outside \[0, data.tokens.vocab_size=100\).*at least 101"):
    token_files.load_token_file(str(tmp_path / "ids.npy"), vocab_size=100)


def test_negative_ids(tmp_path):
  np.save(tmp_path / "ids.npy", np.array([3, -2, 5], np.int64))
  with pytest.raises(UserError, match=r"from -2 to 5"):
    token_files.load_token_file(str(tmp_path / "ids.npy"), vocab_size=10)


def _error(tmp_path, filename, vocab_size=100, dtype="", content=None):
  path = tmp_path / filename
  if content is not None:
    np.save(path, content) if filename.endswith(".npy") else path.write_bytes(content)
  with pytest.raises(UserError) as error:
    token_files.load_token_file(str(path), vocab_size=vocab_size, dtype=dtype)
  return str(error.value)


def test_missing_file(tmp_path):
  assert "does not exist" in _error(tmp_path, "absent.npy")


def test_no_path(tmp_path):
  with pytest.raises(UserError, match="--config.data.path"):
    token_files.load_token_file("", vocab_size=10)


def test_wrong_extension(tmp_path):
  message = _error(tmp_path, "ids.txt", content=b"1 2 3")
  assert "ids.txt" in message and ".npy" in message and ".bin" in message


def test_float_npy(tmp_path):
  assert "float32" in _error(tmp_path, "ids.npy", content=np.ones(10, np.float32))


def test_bool_npy(tmp_path):
  assert "not integer" in _error(tmp_path, "ids.npy", content=np.ones(10, bool))


def test_two_dimensional_npy(tmp_path):
  assert "shape (2, 5)" in _error(tmp_path, "ids.npy", content=np.ones((2, 5), np.int32))


def test_not_an_npy_file(tmp_path):
  (tmp_path / "ids.npy").write_bytes(b"not numpy at all")
  assert "not a readable .npy" in _error(tmp_path, "ids.npy")


def test_empty_npy(tmp_path):
  assert "empty" in _error(tmp_path, "ids.npy", content=np.zeros(0, np.int32))


def test_empty_bin(tmp_path):
  assert "empty" in _error(tmp_path, "ids.bin", content=b"")


def test_bin_size_not_a_multiple_of_dtype(tmp_path):
  message = _error(tmp_path, "ids.bin", dtype="uint32", content=b"\x01\x00\x00\x00\x02\x00")
  assert "6 bytes" in message and "uint32" in message and "data.tokens.token_dtype" in message


def test_unknown_bin_dtype(tmp_path):
  assert "float32" in _error(tmp_path, "ids.bin", dtype="float32", content=b"\x00" * 8)


def test_dtype_with_npy(tmp_path):
  assert ".bin files only" in _error(tmp_path, "ids.npy", dtype="uint16", content=np.ones(4, np.int32))


@pytest.mark.parametrize("vocab_size", [0, -5])
def test_nonpositive_vocab_size(tmp_path, vocab_size):
  assert "--config.data.tokens.vocab_size" in _error(tmp_path, "ids.npy", vocab_size=vocab_size,
                                               content=np.ones(4, np.int32))


def test_split_tail_holds_out_the_end():
  train, held_out = token_files.split_tail(np.arange(100), 0.05)
  np.testing.assert_array_equal(train, np.arange(95))
  np.testing.assert_array_equal(held_out, np.arange(95, 100))
  assert len(token_files.split_tail(np.arange(10), 0.01)[1]) == 1  # at least one held-out token


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_tail_rejects_bad_fractions(fraction):
  with pytest.raises(UserError, match="eval_fraction"):
    token_files.split_tail(np.arange(100), fraction)


def test_split_tail_needs_two_tokens():
  with pytest.raises(UserError, match="cannot be split"):
    token_files.split_tail(np.arange(1), 0.5)
