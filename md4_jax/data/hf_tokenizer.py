"""A Hugging Face tokenizer (`tokenizer.json`, read with the `tokenizers` library: the `hf` extra) as a tokenizer
of this project: `data.tokenizer = "hf"`, the file at `data.tokenizer_path` (a tokenizer.json, or the model
directory holding it; model.init_from sets it to the checkpoint's directory).

Its vocabulary is the model's: `config.json`'s vocab_size beside the file when there is one (checkpoints pad their
embedding past the tokenizer's last id: Qwen2.5's 151,936 rows for 151,665 tokens), else the tokenizer's size.
End-of-text is config.json's eos_token_id, else tokenizer_config.json's eos_token. The whole tokenizer.json is
saved in the run's own tokenizer.json, so a workdir decodes without the checkpoint directory.
"""

import hashlib
import json

import numpy as np
from etils import epath

from md4_jax.data.token_ids import check_ids, decode_around_masks
from md4_jax.errors import UserError

FILE = "tokenizer.json"


def _library():
  try:
    import tokenizers  # noqa: PLC0415 (an optional extra)
  except ImportError:
    raise UserError("data.tokenizer='hf' needs the tokenizers library: pip install 'md4-jax[hf]' (or "
                    "pip install tokenizers)") from None
  return tokenizers


def _parse(text: str):
  """The library's Tokenizer of a tokenizer.json's text; UserError for a malformed one."""
  try:
    return _library().Tokenizer.from_str(text)
  except Exception as error:  # the library raises its own exception type for a malformed file
    raise UserError(f"not a Hugging Face tokenizer.json ({error})") from None


def _eos_id(directory: epath.Path, tokenizer) -> int | None:
  config = directory / "config.json"
  eos = json.loads(config.read_text()).get("eos_token_id") if config.exists() else None
  if isinstance(eos, list):
    eos = eos[0] if eos else None
  if eos is None and (directory / "tokenizer_config.json").exists():
    token = json.loads((directory / "tokenizer_config.json").read_text()).get("eos_token")
    token = token.get("content") if isinstance(token, dict) else token
    eos = tokenizer.token_to_id(token) if isinstance(token, str) else None
  return eos


class HFTokenizer:
  """`tokenizer.json`'s ids; `text` is the file's content (what a saved run keeps)."""

  name = "hf"

  def __init__(self, text: str, vocab_size: int, eos_id: int | None, parsed=None):
    """parsed: the library's Tokenizer of `text`, when the caller has it (parsing a large one takes a while)."""
    self.text, self.vocab_size, self.eos_id = text, vocab_size, eos_id
    self.sha256 = hashlib.sha256(text.encode()).hexdigest()
    self._tokenizer = _parse(text) if parsed is None else parsed
    if self._tokenizer.get_vocab_size(with_added_tokens=True) > vocab_size:
      raise UserError(f"the tokenizer has {self._tokenizer.get_vocab_size(with_added_tokens=True)} tokens, more "
                      f"than the model's vocab_size {vocab_size}")

  @classmethod
  def build(cls, path: str, alphabet: str) -> "HFTokenizer":
    """From data.tokenizer_path: a tokenizer.json, or a directory holding one (and config.json)."""
    del alphabet
    if not path:
      raise UserError("data.tokenizer='hf' reads a Hugging Face tokenizer.json: set data.tokenizer_path=FILE or "
                      "DIR (model.init_from sets it to the checkpoint's directory)")
    file = epath.Path(path)
    file = file / FILE if file.is_dir() else file
    if not file.exists():
      raise UserError(f"data.tokenizer_path={path!r}: {file} does not exist")
    directory, text = file.parent, file.read_text()
    tokenizer = _parse(text)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if (directory / "config.json").exists():
      size = max(size, int(json.loads((directory / "config.json").read_text()).get("vocab_size", size)))
    return cls(text, size, _eos_id(directory, tokenizer), parsed=tokenizer)

  @classmethod
  def from_json(cls, spec: dict) -> "HFTokenizer":
    tokenizer = cls(spec["tokenizer"], spec["vocab_size"], spec["eos_id"])
    if tokenizer.sha256 != spec["sha256"]:
      raise UserError("the saved Hugging Face tokenizer does not match its recorded sha256: the file is damaged")
    return tokenizer

  def encode(self, text: str) -> np.ndarray:
    """text -> int32 ids, without the special tokens a chat template or BOS would add."""
    return np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

  def decode(self, ids) -> str:
    """ids -> text, special tokens shown; the mask as "[MASK]"."""
    decode_run = lambda run: self._tokenizer.decode(run, skip_special_tokens=False)  # noqa: E731
    return decode_around_masks(check_ids(ids, self.vocab_size), self.vocab_size, decode_run, "[MASK]")

  def to_json(self) -> dict:
    return {"kind": self.name, "tokenizer": self.text, "vocab_size": self.vocab_size, "eos_id": self.eos_id,
            "sha256": self.sha256}

  def __eq__(self, other) -> bool:
    return isinstance(other, HFTokenizer) and (other.sha256, other.vocab_size) == (self.sha256, self.vocab_size)

  def __hash__(self) -> int:
    return hash(self.sha256)

  def __repr__(self) -> str:
    return f"HFTokenizer({self.vocab_size} ids, sha256 {self.sha256[:12]})"
