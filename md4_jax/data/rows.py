"""Random-access row collections (what every data source gives) and the `Data` a run trains on.

A row is {"tokens": [D] int32, "token_mask": [D] int32 (0 = padding)}, plus "label": int32 for
sources with class labels. D is the modality's length (data.seq_len for text, H * W * C for images).
"""

import dataclasses

import numpy as np


class StreamRows:
  """A 1-D token stream cut into consecutive rows; with `pad_last`, the final partial row is kept, padded."""

  def __init__(self, tokens: np.ndarray, seq_len: int, pad_last: bool = False):
    self.tokens, self.seq_len = tokens, seq_len
    self.num_rows = -(-len(tokens) // seq_len) if pad_last else len(tokens) // seq_len

  def __len__(self):
    return self.num_rows

  def __getitem__(self, index):
    piece = np.asarray(self.tokens[index * self.seq_len: (index + 1) * self.seq_len], np.int32)
    row = {"tokens": np.zeros(self.seq_len, np.int32), "token_mask": np.zeros(self.seq_len, np.int32)}
    row["tokens"][: len(piece)], row["token_mask"][: len(piece)] = piece, 1
    return row


class RecordRows:
  """Rows from an array_record data source (every position is a real token); its "label", if any, kept."""

  def __init__(self, source, with_label: bool = False):
    self.source, self.with_label = source, with_label

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    record = self.source[index]
    tokens = np.asarray(record["tokens"], np.int32)
    row = {"tokens": tokens, "token_mask": np.ones_like(tokens)}
    if self.with_label:
      row["label"] = np.int32(record["label"])
    return row


class ArrayRows:
  """Rows of an in-memory [N, L] array, with labels [N] when given."""

  def __init__(self, tokens_NxL: np.ndarray, labels_N: np.ndarray | None = None):
    self.tokens, self.labels = np.asarray(tokens_NxL, np.int32), labels_N

  def __len__(self):
    return len(self.tokens)

  def __getitem__(self, index):
    row = {"tokens": self.tokens[index], "token_mask": np.ones_like(self.tokens[index])}
    if self.labels is not None:
      row["label"] = np.int32(self.labels[index])
    return row


@dataclasses.dataclass(frozen=True)
class Data:
  modality: object  # data.modality.Text or Image: vocabulary, length, decoding
  train: object  # random-access rows
  eval: object  # random-access rows of the held-out split (the last one may be padded)

  @property
  def tokenizer(self):
    """The text modality's tokenizer (None for images)."""
    return self.modality.tokenizer
