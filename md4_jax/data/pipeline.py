"""Token streams -> fixed-length rows -> deterministic, resumable batches.

Training: non-overlapping rows of `seq_len` tokens, shuffled with the run seed
(reshuffled each epoch), sharded by JAX process, batched per process with
grain. The grain iterator's state goes into every checkpoint, so a resumed run
sees exactly the batches an uninterrupted run would.
Evaluation: every held-out token exactly once; the last row and the last batch
are padded and `token_mask` marks the padding (excluded from the loss).
"""

import dataclasses
import pathlib

import grain
import jax
import numpy as np

from md4_jax.data import corpora
from md4_jax.data.tokenizers import TEXT8_ALPHABET, CharTokenizer
from md4_jax.errors import UserError

SOURCES = ("embedded", "textfile")


@dataclasses.dataclass(frozen=True)
class TextData:
  tokenizer: CharTokenizer
  train_tokens: np.ndarray  # [N_train] int32
  eval_tokens: np.ndarray  # [N_eval] int32


def load_text_data(data_config, tokenizer_file: pathlib.Path | None = None) -> TextData:
  """Reads the configured corpus and splits it; held-out text is taken from the end.

  `tokenizer_file`: a saved tokenizer to reuse (a resumed run, eval, sampling);
  without one, the character set is built from the training split.
  """
  if data_config.source == "embedded":
    text, default_tokenizer = corpora.embedded_wikipedia(), CharTokenizer(TEXT8_ALPHABET)
  elif data_config.source == "textfile":
    text, default_tokenizer = corpora.read_text_file(data_config.path), None
  else:
    raise UserError(f"data.source={data_config.source!r} is not known; choose one of {SOURCES}")
  if not 0.0 < data_config.eval_fraction < 1.0:
    raise UserError(f"data.eval_fraction={data_config.eval_fraction} must be strictly between 0 and 1")
  num_eval = max(1, int(len(text) * data_config.eval_fraction))
  train_text, eval_text = text[:-num_eval], text[-num_eval:]
  if tokenizer_file is not None and tokenizer_file.exists():
    tokenizer = CharTokenizer.load(tokenizer_file)
  else:
    tokenizer = default_tokenizer or CharTokenizer.from_text(train_text)
  # Held-out characters never seen in training cannot be encoded; they are dropped.
  eval_text = "".join(c for c in eval_text if c in set(tokenizer.alphabet))
  data = TextData(tokenizer, tokenizer.encode(train_text), tokenizer.encode(eval_text))
  if len(data.train_tokens) < data_config.seq_len:
    raise UserError(f"the training split has {len(data.train_tokens)} tokens, fewer than one sequence "
                    f"(data.seq_len={data_config.seq_len}); use a longer text or a shorter data.seq_len")
  return data


def train_dataset(tokens: np.ndarray, seq_len: int, global_batch_size: int, seed: int) -> grain.MapDataset:
  """Batches of this process's share of the shuffled rows, repeated forever; `[i]` is batch i."""
  num_rows = len(tokens) // seq_len
  rows_NxL = tokens[: num_rows * seq_len].reshape(num_rows, seq_len)
  process_count, process_index = jax.process_count(), jax.process_index()
  if global_batch_size % process_count:
    raise UserError(f"train.batch_size={global_batch_size} must divide over {process_count} processes")
  dataset = grain.MapDataset.source(rows_NxL).shuffle(seed=seed).repeat(None)
  dataset = dataset[process_index::process_count]
  return dataset.batch(global_batch_size // process_count, drop_remainder=True).map(
      lambda tokens_BxL: {"tokens": tokens_BxL, "token_mask": np.ones_like(tokens_BxL)})


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int, max_rows: int = 0):
  """Yields {"tokens", "token_mask"} batches covering the held-out tokens exactly once."""
  num_rows = -(-len(tokens) // seq_len)
  if max_rows:
    num_rows = min(num_rows, max_rows)
  num_batches = -(-num_rows // batch_size)
  padded = np.zeros(num_batches * batch_size * seq_len, np.int32)
  mask = np.zeros_like(padded)
  used = tokens[: num_rows * seq_len]
  padded[: len(used)], mask[: len(used)] = used, 1
  shape = (num_batches, batch_size, seq_len)
  for tokens_BxL, mask_BxL in zip(padded.reshape(shape), mask.reshape(shape)):
    yield {"tokens": tokens_BxL, "token_mask": mask_BxL}
