"""Every data source (sources.py, by name) -> rows -> deterministic, resumable batches.

A source gives a modality and two random-access row collections (train and the held-out
split); each row is {"tokens": [D] int32, "token_mask": [D] int32}, plus "label" for labelled
images. Training: grain shuffles rows with the run seed (reshuffled each epoch), takes
this process's share and batches it; the grain iterator's state goes into
every checkpoint, so a resumed run sees exactly the batches an uninterrupted
run would. Evaluation: every held-out token exactly once; the last row and the
last batch are padded and `token_mask` marks the padding (excluded from the loss).
"""

import grain
import jax
import numpy as np

from md4_jax.data import data_dir, sources
from md4_jax.data.rows import Data, RecordRows, StreamRows  # noqa: F401 (the pipeline's row types)
from md4_jax.errors import UserError

__all__ = ["Data", "RecordRows", "StreamRows", "data_dir", "load_data", "prepare", "train_dataset", "eval_batches"]


def held_out_splits(source: str) -> tuple[str, ...]:
  """The held-out splits a source has (text8 has its standard test split besides validation)."""
  return sources.get(source).held_out


def load_data(data_config, eval_split: str = "validation", saved_modality=None) -> Data:
  """Rows of the configured source. `saved_modality`: a run's own (its tokenizer is reused)."""
  source = sources.get(data_config.source)
  if eval_split not in source.held_out:
    raise UserError(f"eval.split={eval_split!r}: data.source={source.name!r} has only a 'validation' split")
  data = source.load(data_config, eval_split, saved_modality)
  if len(data.train) == 0:
    raise UserError(f"the training split has fewer tokens than one sequence (data.seq_len={data_config.seq_len}); "
                    "use more data or a shorter data.seq_len")
  if len(data.eval) == 0:  # else the first evaluation would find no token to score
    raise UserError(f"the held-out split {eval_split!r} of data.source={source.name!r} is empty; use more data "
                    "(or, for a text or token file, a larger data.eval_fraction)")
  return data


def nominal_modality(data_config):
  """The source's modality (vocabulary, length, classes) without reading data where possible."""
  return sources.get(data_config.source).modality(data_config)


def prepare(data_config) -> str:
  """Downloads and preprocesses what `data_config` needs into data.dir; returns a description of it."""
  source = sources.get(data_config.source)
  if source.prepare is None:
    return f"nothing to prepare: data.source={source.name!r} reads its files directly"
  return source.prepare(data_config)


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
