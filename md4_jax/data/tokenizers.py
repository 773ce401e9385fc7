"""Tokenizers (char, byte, GPT-2 BPE, a Hugging Face tokenizer.json: hf_tokenizer.py), saved with every run so eval and sampling decode identically.

Every tokenizer has `name`, `vocab_size`, `eos_id`, `encode(text) -> int32 ids`,
`decode(ids) -> text` and `to_json()`. The diffusion model's mask id is
`vocab_size` (one past the last real id); `decode` renders it visibly.
GPT-2 BPE runs through tiktoken from a local `gpt2.tiktoken` ranks file (by default the copy that ships with
the package, md4_jax/data/assets/) and never touches the network: tiktoken's own `get_encoding("gpt2")` would
download it.
"""

import base64
import dataclasses
import json
import pathlib
from typing import ClassVar

import numpy as np
import tiktoken
from etils import epath

from md4_jax import parts
from md4_jax.data import download, shipped
from md4_jax.data.hf_tokenizer import HFTokenizer
from md4_jax.data.token_ids import check_ids, decode_around_masks
from md4_jax.errors import UserError

TEXT8_ALPHABET = " abcdefghijklmnopqrstuvwxyz"  # 27 symbols: space is id 0

# GPT-2's pre-tokenization regex (from OpenAI's GPT-2 encoder; tiktoken's r50k pattern
# is a faster rewrite of it that splits identically).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_EOS = "<|endoftext|>"
# tiktoken's GPT-2-compatible ranks file, the one md4_jax/data/assets/gpt2.tiktoken holds.
GPT2_BPE_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
GPT2_BPE_SHA256 = shipped.SHA256["gpt2.tiktoken"]
HOW_TO_GET_GPT2_BPE = (
    "leave data.tokenizer_path empty to use the copy that ships with md4-jax "
    f"({shipped.path('gpt2.tiktoken')}), or download {GPT2_BPE_URL} and pass --config.data.tokenizer_path=FILE")


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
  """One id per character of `alphabet`, in order."""

  alphabet: str
  name: ClassVar[str] = "char"
  eos_id: ClassVar[int | None] = None  # char corpora are one stream, not documents

  @classmethod
  def build(cls, bpe_path: str, alphabet: str) -> "CharTokenizer":
    del bpe_path
    if not alphabet:
      raise UserError("the char tokenizer needs an alphabet (its characters, in id order)")
    return cls(alphabet)

  @classmethod
  def from_json(cls, spec: dict) -> "CharTokenizer":
    return cls(spec["alphabet"])

  @classmethod
  def from_text(cls, text: str) -> "CharTokenizer":
    """The sorted set of characters of `text` (the training split, so held-out text adds none)."""
    return cls("".join(sorted(set(text))))

  @property
  def vocab_size(self) -> int:
    return len(self.alphabet)

  def encode(self, text: str) -> np.ndarray:
    """text -> int32 ids; characters outside the alphabet are an error naming them."""
    lookup = np.full(0x110000, -1, np.int32)
    lookup[[ord(c) for c in self.alphabet]] = np.arange(self.vocab_size)
    ids = lookup[np.frombuffer(text.encode("utf-32-le"), np.uint32)]
    if (ids < 0).any():
      unknown = sorted({text[i] for i in np.flatnonzero(ids < 0)[:100]})
      raise UserError(f"characters {unknown!r} are not in the tokenizer's alphabet")
    return ids

  def decode(self, ids) -> str:
    """ids -> text; ids outside the alphabet (the mask id) print as '_'."""
    return "".join(self.alphabet[i] if 0 <= i < self.vocab_size else "_" for i in np.asarray(ids).tolist())

  def to_json(self) -> dict:
    return {"kind": self.name, "alphabet": self.alphabet}

  def save(self, path: pathlib.Path) -> None:
    save_tokenizer(self, path)

  @classmethod
  def load(cls, path: pathlib.Path) -> "CharTokenizer":
    tokenizer = load_tokenizer(path)
    if not isinstance(tokenizer, cls):
      raise UserError(f"{path} holds a {tokenizer.name} tokenizer, not a char tokenizer")
    return tokenizer


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  """UTF-8 bytes: any text encodes, with no vocabulary to build or ship."""

  name: ClassVar[str] = "byte"
  vocab_size: ClassVar[int] = 256
  eos_id: ClassVar[int | None] = None  # every byte value can occur in text, so none is free for eos

  @classmethod
  def build(cls, bpe_path: str, alphabet: str) -> "ByteTokenizer":
    del bpe_path, alphabet
    return cls()

  @classmethod
  def from_json(cls, spec: dict) -> "ByteTokenizer":
    del spec
    return cls()

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    """Sampled bytes need not be valid UTF-8, so bad sequences become U+FFFD; the mask prints as '_'."""
    return decode_around_masks(check_ids(ids, 256), 256, lambda run: bytes(run).decode("utf-8", "replace"), "_")

  def decode_bytes(self, ids) -> bytes:
    """The bytes themselves (the mask as '_'), for text decoded piece by piece."""
    return decode_around_masks(check_ids(ids, 256), 256, bytes, b"_")

  def to_json(self) -> dict:
    return {"kind": self.name}


_ENCODINGS = {}  # sha256 of a ranks file -> tiktoken.Encoding; building one takes ~0.1 s


def _gpt2_encoding(path: pathlib.Path, sha256: str):
  if sha256 not in _ENCODINGS:
    # Parsed here rather than with tiktoken.load, which may also read and write a cache directory.
    ranks = {}
    try:  # one "base64-token rank" pair per line
      for line in path.read_bytes().splitlines():
        if line.strip():
          token, rank = line.split()
          ranks[base64.b64decode(token, validate=True)] = int(rank)
    except ValueError:  # includes binascii.Error
      ranks = {}
    if sorted(ranks.values()) != list(range(Gpt2Tokenizer.eos_id)):
      raise UserError(f"{path} is not GPT-2's BPE ranks ({len(ranks)} tokens, expected ranks 0..50255); "
                      + HOW_TO_GET_GPT2_BPE)
    _ENCODINGS[sha256] = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                           special_tokens={GPT2_EOS: Gpt2Tokenizer.eos_id},
                                           explicit_n_vocab=Gpt2Tokenizer.vocab_size)
  return _ENCODINGS[sha256]


class Gpt2Tokenizer:
  """GPT-2's BPE (ids identical to GPT-2's) from a local ranks file.

  `expected_sha256` (from a saved tokenizer.json) makes a changed file an error
  instead of silently different ids.
  """

  name = "gpt2"
  vocab_size = 50257
  eos_id = 50256

  def __init__(self, bpe_path, expected_sha256: str | None = None):
    self.bpe_path = pathlib.Path(bpe_path).expanduser().resolve()
    if not self.bpe_path.is_file():
      raise UserError(f"GPT-2 BPE file {self.bpe_path} does not exist: put it back, or " + HOW_TO_GET_GPT2_BPE)
    self.sha256 = download.sha256_of(self.bpe_path)
    if expected_sha256 is not None and self.sha256 != expected_sha256:
      raise UserError(f"GPT-2 BPE file {self.bpe_path} has sha256 {self.sha256}, but the tokenizer was saved "
                      f"with {expected_sha256}: restore the original file (GPT-2's is {GPT2_BPE_SHA256}); "
                      + HOW_TO_GET_GPT2_BPE)
    self._encoding = _gpt2_encoding(self.bpe_path, self.sha256)

  @classmethod
  def build(cls, bpe_path: str, alphabet: str) -> "Gpt2Tokenizer":
    del alphabet
    return cls(find_gpt2_bpe(bpe_path))

  @classmethod
  def from_json(cls, spec: dict) -> "Gpt2Tokenizer":
    """A saved tokenizer. Its recorded file may have moved (an older install kept it inside mlx-whisper, a venv
    may be rebuilt): GPT-2's own ranks are then read from the shipped copy, the same bytes."""
    path = pathlib.Path(spec["bpe_path"]).expanduser()
    if not path.is_file() and spec["sha256"] == GPT2_BPE_SHA256:
      path = shipped.path("gpt2.tiktoken")
    return cls(path, expected_sha256=spec["sha256"])

  def encode(self, text: str) -> np.ndarray:
    """text -> int32 ids; a literal "<|endoftext|>" in the text becomes eos (50256).

    tiktoken raises on special-token text unless it is allowed; mapping it to eos
    is the choice that keeps any text encodable and gives the id its only meaning.
    """
    return np.asarray(self._encoding.encode(text, allowed_special={GPT2_EOS}), np.int32)

  def decode(self, ids) -> str:
    ids = check_ids(ids, self.vocab_size)
    return decode_around_masks(ids, self.vocab_size, self._encoding.decode, "[MASK]")

  def decode_bytes(self, ids) -> bytes:
    """The tokens' bytes (the mask as "[MASK]"), for text decoded piece by piece: a piece may end inside a
    character whose other bytes are in the next token."""
    return decode_around_masks(check_ids(ids, self.vocab_size), self.vocab_size, self._encoding.decode_bytes,
                                b"[MASK]")

  def to_json(self) -> dict:
    return {"kind": self.name, "bpe_path": str(self.bpe_path), "sha256": self.sha256}

  def __eq__(self, other) -> bool:
    return isinstance(other, Gpt2Tokenizer) and other.sha256 == self.sha256  # same ranks, same ids

  def __hash__(self) -> int:
    return hash(self.sha256)

  def __repr__(self) -> str:
    return f"Gpt2Tokenizer({str(self.bpe_path)!r})"


def find_gpt2_bpe(explicit_path: str = "") -> pathlib.Path:
  """`explicit_path` if given, else the gpt2.tiktoken that ships with the package (checked whole)."""
  if explicit_path:
    path = pathlib.Path(explicit_path).expanduser()
    if not path.is_file():
      raise UserError(f"data.tokenizer_path={explicit_path!r} is not a file; " + HOW_TO_GET_GPT2_BPE)
    return path
  shipped.read_bytes("gpt2.tiktoken")  # a missing or damaged copy is named here, not as "not GPT-2's ranks"
  return shipped.path("gpt2.tiktoken")


# The tokenizers by name: data.tokenizer names one, a saved tokenizer.json's "kind" another. One outside the package
# is a module path whose module sets TOKENIZER to a class with the same methods (md4_jax/parts.py).
TOKENIZERS = {tokenizer.name: tokenizer for tokenizer in (CharTokenizer, ByteTokenizer, Gpt2Tokenizer, HFTokenizer)}
NAMES = tuple(TOKENIZERS)


def tokenizer_class(name: str):
  """The tokenizer class called `name` (built-in, or a module path); UserError naming the choices."""
  found = parts.find("tokenizer", name, TOKENIZERS)
  return found if name in TOKENIZERS else found.TOKENIZER


def make_tokenizer(name: str, bpe_path: str = "", alphabet: str = ""):
  """The tokenizer called `name`: "char" (over `alphabet`), "byte" or "gpt2" (from `bpe_path` or the shipped copy)."""
  return tokenizer_class(name).build(bpe_path, alphabet)


def tokenizer_from_json(spec: dict):
  """The inverse of `to_json`; a gpt2 spec must find its BPE file with the recorded sha256."""
  kind = spec.get("kind") if isinstance(spec, dict) else None
  if not isinstance(kind, str) or (kind not in TOKENIZERS and not parts.is_module_path(kind)):
    raise UserError(f"unknown tokenizer description {spec!r}: its 'kind' must be one of {NAMES} or a module path")
  return tokenizer_class(kind).from_json(spec)


def save_tokenizer(tokenizer, path) -> None:
  """path: a local path or an epath.Path in a bucket (a run's tokenizer.json)."""
  epath.Path(path).write_text(json.dumps(tokenizer.to_json()))


def load_tokenizer(path):
  path = epath.Path(path)
  try:
    spec = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as error:
    raise UserError(f"cannot read the tokenizer file {path}: {error}") from None
  try:
    return tokenizer_from_json(spec)
  except UserError as error:
    raise UserError(f"{path}: {error}") from None
