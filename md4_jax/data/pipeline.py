"""Every data source -> rows of `seq_len` tokens -> deterministic, resumable batches.

A source gives a tokenizer and two random-access row collections (train and
the held-out split); each row is {"tokens": [L] int32, "token_mask": [L] int32}.
Training: grain shuffles rows with the run seed (reshuffled each epoch), takes
this process's share and batches it; the grain iterator's state goes into
every checkpoint, so a resumed run sees exactly the batches an uninterrupted
run would. Evaluation: every held-out token exactly once; the last row and the
last batch are padded and `token_mask` marks the padding (excluded from the loss).
"""

import dataclasses
import pathlib

import grain
import jax
import numpy as np

from md4_jax.data import corpora, hub_datasets, text8, token_files, tokenizers
from md4_jax.errors import UserError

TEXT_SOURCES = ("embedded", "textfile")
PREPARED_SOURCES = ("text8",) + hub_datasets.PACKED_SOURCES
SOURCES = TEXT_SOURCES + ("tokens",) + PREPARED_SOURCES


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
  """Packed rows from an array_record data source (every position is a real token)."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    tokens = np.asarray(self.source[index]["tokens"], np.int32)
    return {"tokens": tokens, "token_mask": np.ones_like(tokens)}


@dataclasses.dataclass(frozen=True)
class Data:
  tokenizer: object  # see tokenizers.py: vocab_size, encode, decode, to_json
  train: object  # random-access rows
  eval: object  # random-access rows of the held-out split (the last one may be padded)


def data_dir(data_config) -> pathlib.Path:
  return pathlib.Path(data_config.dir).expanduser()


def _tokenizer(data_config, train_text: str | None = None):
  if data_config.tokenizer == "char":
    if data_config.source == "textfile":
      return tokenizers.CharTokenizer.from_text(train_text)
    return tokenizers.CharTokenizer(tokenizers.TEXT8_ALPHABET)
  return tokenizers.make_tokenizer(data_config.tokenizer, bpe_path=data_config.tokenizer_path)


def held_out_splits(source: str) -> tuple[str, ...]:
  """The held-out splits a source has (text8 has its standard test split besides validation)."""
  return ("validation", "test") if source == "text8" else ("validation",)


def load_data(data_config, eval_split: str = "validation", tokenizer_file: pathlib.Path | None = None) -> Data:
  """Rows of the configured source. `tokenizer_file`: a run's saved tokenizer, reused when present."""
  source, seq_len = data_config.source, data_config.seq_len
  saved = tokenizers.load_tokenizer(tokenizer_file) if tokenizer_file and tokenizer_file.exists() else None
  if source not in SOURCES:
    raise UserError(f"data.source={source!r} is not known; choose one of {SOURCES}")
  if eval_split not in held_out_splits(source):
    raise UserError(f"eval.split={eval_split!r}: data.source={source!r} has only a 'validation' split")
  if source in TEXT_SOURCES or source == "tokens":
    if source == "tokens":
      if data_config.tokenizer == "char":
        raise UserError("data.source='tokens' holds token ids, not text: set data.tokenizer to 'byte' or "
                        "'gpt2' (whichever made the ids)")
      tokens = token_files.load_token_file(data_config.path, data_config.vocab_size, data_config.token_dtype)
      tokenizer = saved or _tokenizer(data_config)
      if tokenizer.vocab_size != data_config.vocab_size:
        raise UserError(f"data.vocab_size={data_config.vocab_size} but the {tokenizer.name} tokenizer has "
                        f"{tokenizer.vocab_size} ids; set data.vocab_size={tokenizer.vocab_size}")
      train_tokens, eval_tokens = token_files.split_tail(tokens, data_config.eval_fraction)
    else:
      text = corpora.embedded_wikipedia() if source == "embedded" else corpora.read_text_file(data_config.path)
      train_text, eval_text = _split_text(text, data_config.eval_fraction)
      tokenizer = saved or _tokenizer(data_config, train_text)
      if tokenizer.name == "char":  # held-out characters never seen in training cannot be encoded
        known = set(tokenizer.alphabet)
        eval_text = "".join(c for c in eval_text if c in known)
      train_tokens, eval_tokens = tokenizer.encode(train_text), tokenizer.encode(eval_text)
    data = Data(tokenizer, StreamRows(train_tokens, seq_len), StreamRows(eval_tokens, seq_len, pad_last=True))
  elif source == "text8":
    splits = text8.load(data_dir(data_config))
    tokenizer = tokenizers.CharTokenizer(tokenizers.TEXT8_ALPHABET)
    data = Data(tokenizer, StreamRows(splits["train"], seq_len), StreamRows(splits[eval_split], seq_len, pad_last=True))
  else:
    splits, meta = hub_datasets.load(source, data_dir(data_config), seq_len=seq_len, subset=data_config.subset)
    tokenizer = saved or tokenizers.tokenizer_from_json(meta["tokenizer"])
    data = Data(tokenizer, RecordRows(splits["train"]), RecordRows(splits["validation"]))
  if len(data.train) == 0:
    raise UserError(f"the training split has fewer tokens than one sequence (data.seq_len={seq_len}); "
                    "use more data or a shorter data.seq_len")
  return data


def nominal_vocab_size(data_config) -> int:
  """The model's vocabulary without reading data (a textfile's character set needs the file)."""
  if data_config.source == "tokens":
    return data_config.vocab_size
  if data_config.tokenizer == "char":
    if data_config.source == "textfile":
      return load_data(data_config).tokenizer.vocab_size
    return len(tokenizers.TEXT8_ALPHABET)
  return {"byte": 256, "gpt2": 50257}[data_config.tokenizer]


def _split_text(text: str, eval_fraction: float) -> tuple[str, str]:
  if not 0.0 < eval_fraction < 1.0:
    raise UserError(f"data.eval_fraction={eval_fraction} must be strictly between 0 and 1")
  num_eval = max(1, int(len(text) * eval_fraction))
  return text[:-num_eval], text[-num_eval:]


def prepare(data_config) -> str:
  """Downloads and preprocesses what `data_config` needs into data.dir; returns a description of it."""
  source, root = data_config.source, data_dir(data_config)
  if source == "text8":
    return str(text8.prepare(root, data_config.manual_dir))
  if source in hub_datasets.PACKED_SOURCES:
    tokenizer = _tokenizer(data_config)
    return str(hub_datasets.prepare(source, root, tokenizer=tokenizer, seq_len=data_config.seq_len,
                                    manual_dir=data_config.manual_dir, subset=data_config.subset,
                                    max_documents=data_config.max_documents))
  if source not in SOURCES:
    raise UserError(f"data.source={source!r} is not known; choose one of {SOURCES}")
  return f"nothing to prepare: data.source={source!r} reads its files directly"


def train_dataset(rows, global_batch_size: int, seed: int) -> grain.MapDataset:
  """This process's part of each global batch of the shuffled rows, repeated forever; `[i]` is batch i.

  Global batch i is the shuffled stream's rows [i B, (i + 1) B); process p reads only its
  contiguous block [p B / P, (p + 1) B / P) of it, the rows its devices hold on the mesh, so
  any process count assembles the same global batches.
  """
  process_count, process_index = jax.process_count(), jax.process_index()
  if global_batch_size % process_count:
    raise UserError(f"train.batch_size={global_batch_size} must divide over {process_count} processes")
  dataset = grain.MapDataset.source(rows).shuffle(seed=seed).repeat(None)
  return dataset.batch(global_batch_size // process_count, drop_remainder=True)[process_index::process_count]


def eval_batches(rows, batch_size: int, max_rows: int = 0):
  """Yields this process's block of each global eval batch of the rows, in order.

  The last global batch is padded with empty rows (token_mask 0), so a full pass counts
  every held-out token exactly once whatever the batch size and process count.
  """
  num_rows = min(len(rows), max_rows) if max_rows else len(rows)
  process_count, process_index = jax.process_count(), jax.process_index()
  if batch_size % process_count:
    raise UserError(f"eval.batch_size={batch_size} must divide over {process_count} processes")
  local = batch_size // process_count
  empty = {key: np.zeros_like(value) for key, value in rows[0].items()}
  for start in range(0, num_rows, batch_size):
    first = start + process_index * local
    batch = [rows[i] if i < num_rows else empty for i in range(first, first + local)]
    yield {key: np.stack([row[key] for row in batch]) for key in empty}
