"""What every tokenizer's decode shares: ids checked against the vocabulary, and runs of real ids decoded
between mask ids."""

import numpy as np


def check_ids(ids, vocab_size: int) -> list[int]:
  """ids as a list; anything but a real id or the mask id is a bug upstream, so it is not skipped."""
  ids = np.asarray(ids).reshape(-1).tolist()
  bad = [i for i in ids if not 0 <= i <= vocab_size]
  if bad:
    raise ValueError(f"ids {bad[:10]} are outside [0, {vocab_size}] (vocab_size {vocab_size} is the mask)")
  return ids


def decode_around_masks(ids: list[int], mask_id: int, decode_run, mask_text: str) -> str:
  """Decodes each run of real ids as a whole, so a multi-byte character split over ids survives."""
  pieces, run = [], []
  for i in ids + [mask_id]:  # a trailing sentinel flushes the last run
    if i != mask_id:
      run.append(i)
      continue
    pieces.append(decode_run(run))
    pieces.append(mask_text)
    run = []
  return mask_text[:0].join(pieces)[:-len(mask_text)]  # drop the sentinel's mask text (str or bytes alike)
