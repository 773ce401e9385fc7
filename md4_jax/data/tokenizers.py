"""Character tokenizers, saved with every run so eval and sampling decode identically."""

import dataclasses
import json
import pathlib

import numpy as np

from md4_jax.errors import UserError

TEXT8_ALPHABET = " abcdefghijklmnopqrstuvwxyz"  # 27 symbols: space is id 0


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
  """One id per character of `alphabet`, in order."""

  alphabet: str

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

  def save(self, path: pathlib.Path) -> None:
    path.write_text(json.dumps({"kind": "char", "alphabet": self.alphabet}))

  @classmethod
  def load(cls, path: pathlib.Path) -> "CharTokenizer":
    spec = json.loads(path.read_text())
    return cls(spec["alphabet"])
