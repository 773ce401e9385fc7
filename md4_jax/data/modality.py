"""What a token is: text (a tokenizer's ids) or image (sub-pixel values), and how samples look on disk.

A modality fixes the network's vocabulary V (the mask id is V) and the length D of a sequence,
the unit of the bound (bits per token, or per image dimension), how samples are decoded and
written (text files, PNG grids), and whether examples carry class labels. The workdir keeps it
as `modality.json` (text runs also keep `tokenizer.json`), so eval and sampling decode exactly as
training did.
"""

import dataclasses
import json

import numpy as np
from etils import epath

from md4_jax.data import pictures, tokenizers
from md4_jax.errors import UserError
from md4_jax.storage import files


@dataclasses.dataclass(frozen=True)
class Text:
  """Token sequences of `length` ids; `tokenizer` decodes them (None: ids only, e.g. in benchmarks)."""

  vocab_size: int
  length: int
  tokenizer: object = None
  kind = "text"
  unit = "token"  # bits per token; perplexity is exp(nats per token)
  shows_perplexity = True
  num_classes = 0  # text examples carry no class labels

  @classmethod
  def of(cls, tokenizer, length: int) -> "Text":
    return cls(tokenizer.vocab_size, length, tokenizer)

  def to_json(self) -> dict:
    return {"kind": self.kind, "length": self.length, "tokenizer": self.tokenizer.to_json()}

  @classmethod
  def from_json(cls, spec: dict) -> "Text":
    return cls.of(tokenizers.tokenizer_from_json(spec["tokenizer"]), spec["length"])

  def describe(self, tokens_L) -> dict:
    """What a samples .jsonl line says of one sample."""
    return {"text": self.tokenizer.decode(tokens_L)}

  def decode_bytes(self, tokens_L) -> bytes:
    """Tokens as UTF-8 bytes: GPT-2 and byte tokens may end inside a character, which an incremental decoder
    completes with the next piece (a long sample written segment by segment)."""
    decode_bytes = getattr(self.tokenizer, "decode_bytes", None)
    return decode_bytes(tokens_L) if decode_bytes else self.tokenizer.decode(tokens_L).encode("utf-8")

  token_kind = "token"

  def token_name(self, token: int) -> str:
    """A token as a label: its text, with spaces and newlines made visible."""
    text = self.tokenizer.decode([token]) if self.tokenizer is not None else str(token)
    return text.replace(" ", "␣").replace("\n", "\\n") or repr(text)

  def write_samples(self, stem: epath.Path, tokens_NxL, order_NxL) -> list[epath.Path]:
    """stem.txt: the samples, readable."""
    del order_NxL
    path = stem.with_name(stem.name + ".txt")
    files.write_text_atomically(path, "".join(f"=== sample {i} ===\n{self.tokenizer.decode(row)}\n\n"
                                              for i, row in enumerate(np.asarray(tokens_NxL))))
    return [path]


@dataclasses.dataclass(frozen=True)
class Image:
  """H x W x C images with `levels` values per sub-pixel, flattened channel-interleaved per pixel:
  token (h W + w) C + c is channel c of pixel (h, w). `num_classes` > 0: examples carry labels 0..n-1."""

  height: int
  width: int
  channels: int
  levels: int
  num_classes: int = 0
  kind = "image"
  unit = "dim"  # bits per dimension (sub-pixel), the image-likelihood convention
  shows_perplexity = False
  tokenizer = None

  @property
  def vocab_size(self) -> int:
    return self.levels

  @property
  def length(self) -> int:
    return self.height * self.width * self.channels

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.height, self.width, self.channels)

  @classmethod
  def from_json(cls, spec: dict) -> "Image":
    return cls(spec["height"], spec["width"], spec["channels"], spec["levels"], spec.get("num_classes", 0))

  def to_json(self) -> dict:
    return {"kind": self.kind, "height": self.height, "width": self.width, "channels": self.channels,
            "levels": self.levels, "num_classes": self.num_classes}

  def describe(self, tokens_L) -> dict:
    return {"tokens": np.asarray(tokens_L).tolist()}

  token_kind = "pixel level"

  def token_name(self, token: int) -> str:
    return str(token)

  def write_samples(self, stem: epath.Path, tokens_NxL, order_NxL, strip_rows: int = 4) -> list[epath.Path]:
    """stem.png: the samples in a grid; stem_process.png: the reverse process of the first `strip_rows`
    samples, from all masked (magenta) to finished."""
    grid_path, strip_path = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + "_process.png")
    files.write_png_atomically(grid_path, pictures.sample_grid(tokens_NxL, self))
    files.write_png_atomically(strip_path, pictures.reverse_process_strip(
        np.asarray(tokens_NxL)[:strip_rows], np.asarray(order_NxL)[:strip_rows], self))
    return [grid_path, strip_path]


KINDS = {modality.kind: modality for modality in (Text, Image)}  # what modality.json's "kind" may name


def from_json(spec: dict):
  kind = spec.get("kind") if isinstance(spec, dict) else None
  if kind not in KINDS:
    raise UserError(f"unknown modality description {spec!r}: its 'kind' must be one of {tuple(KINDS)}")
  return KINDS[kind].from_json(spec)


def save(modality, workdir: epath.Path) -> None:
  """workdir/modality.json, and for text workdir/tokenizer.json (the workdir contract keeps it)."""
  files.write_text_atomically(workdir / "modality.json", json.dumps(modality.to_json(), indent=1))
  if modality.kind == "text":
    tokenizers.save_tokenizer(modality.tokenizer, workdir / "tokenizer.json")


def load(workdir: epath.Path, length: int | None = None):
  """The workdir's modality; a workdir from before modality.json holds only tokenizer.json (text of `length`)."""
  path = workdir / "modality.json"
  if path.exists():
    try:
      return from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError) as error:
      raise UserError(f"cannot read {path} ({error}); restore it from a copy of the run") from None
  if (workdir / "tokenizer.json").exists() and length is not None:
    return Text.of(tokenizers.load_tokenizer(workdir / "tokenizer.json"), length)
  return None


def same_token_ids(a, b) -> bool:
  """Whether two modalities read the same token ids (any length): a judge or an init_from source must."""
  token_ids = lambda m: {k: v for k, v in m.to_json().items() if k != "length"}  # noqa: E731
  return a is not None and b is not None and token_ids(a) == token_ids(b)
