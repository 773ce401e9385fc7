"""Token ids the user already has on disk (.npy, or raw .bin like nanoGPT's): the `tokens` source's files
(data/sources/tokens.py).

Files are memory-mapped, so a multi-gigabyte file costs no memory; the id
range is checked chunk by chunk for the same reason.
"""

import pathlib

import numpy as np

from md4_jax.errors import UserError

BIN_DTYPES = ("uint16", "uint32", "int32")  # raw .bin files carry no dtype; uint16 is nanoGPT's
_CHECK_CHUNK = 1 << 24  # ids per range-check chunk (16M ids: at most 128 MB in memory)


def _open(file: pathlib.Path, dtype: str) -> np.ndarray:
  """The file's ids as a memory-mapped array, with the format checks that need no scan."""
  name = str(file)
  suffix = file.suffix.lower()
  if suffix == ".npy":
    if dtype:
      raise UserError(f"data.tokens.token_dtype={dtype!r} applies to raw .bin files only; {name} stores its own "
                      "dtype: leave data.tokens.token_dtype empty")
    try:
      tokens = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
      raise UserError(f"{name} is not a readable .npy array ({error}); save it with np.save(path, ids)") from error
    if not np.issubdtype(tokens.dtype, np.integer):
      raise UserError(f"{name} holds {tokens.dtype} values, not integer token ids; save ids as an integer "
                      "array (e.g. ids.astype(np.int32))")
    if tokens.ndim != 1:
      raise UserError(f"{name} has shape {tokens.shape}; the tokens source needs one 1-D stream of ids "
                      "(save ids.reshape(-1))")
    return tokens
  if suffix == ".bin":
    dtype = dtype or "uint16"
    if dtype not in BIN_DTYPES:
      raise UserError(f"data.tokens.token_dtype={dtype!r} is not supported; choose one of {BIN_DTYPES}")
    num_bytes, item_bytes = file.stat().st_size, np.dtype(dtype).itemsize
    if num_bytes % item_bytes:
      raise UserError(f"{name} has {num_bytes} bytes, not a multiple of {item_bytes} ({dtype}); set "
                      f"data.tokens.token_dtype to the dtype that wrote it ({BIN_DTYPES})")
    if num_bytes == 0:
      raise UserError(f"{name} is empty; it needs at least a few sequences of token ids")
    return np.memmap(file, dtype=dtype, mode="r")
  raise UserError(f"data.path={name!r} must end in .npy (np.save) or .bin (raw ids, dtype data.tokens.token_dtype)")


def _check_ids(tokens: np.ndarray, vocab_size: int, name: str) -> None:
  """Every id in [0, vocab_size), scanned in chunks so a big memmap is never loaded whole."""
  lowest, highest = None, None
  for start in range(0, len(tokens), _CHECK_CHUNK):
    chunk = np.asarray(tokens[start: start + _CHECK_CHUNK])
    chunk_min, chunk_max = int(chunk.min()), int(chunk.max())
    lowest = chunk_min if lowest is None else min(lowest, chunk_min)
    highest = chunk_max if highest is None else max(highest, chunk_max)
  if lowest < 0 or highest >= vocab_size:
    raise UserError(f"{name} has ids from {lowest} to {highest}, outside [0, data.tokens.vocab_size={vocab_size}); "
                    f"set data.tokens.vocab_size to the tokenizer's vocabulary (at least {highest + 1}) or fix the file")


def load_token_file(path: str, vocab_size: int, dtype: str = "") -> np.ndarray:
  """[num_tokens] ids from a .npy (any integer dtype) or raw .bin file (`dtype`, default uint16), memory-mapped."""
  if vocab_size <= 0:
    raise UserError(f"data.tokens.vocab_size={vocab_size}: data.source='tokens' needs the vocabulary size, ids being "
                    "in [0, vocab_size); pass --config.data.tokens.vocab_size=N")
  if not path:
    raise UserError("data.source='tokens' needs a file: pass --config.data.path=/path/to/ids.npy (or .bin)")
  file = pathlib.Path(path).expanduser()
  if not file.is_file():
    raise UserError(f"data.path={path!r} does not exist or is not a file; pass an existing .npy or .bin file")
  tokens = _open(file, dtype)
  if tokens.size == 0:
    raise UserError(f"{file} is empty; it needs at least a few sequences of token ids")
  _check_ids(tokens, vocab_size, str(file))
  return tokens


def split_tail(tokens: np.ndarray, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """(train, eval): the last `eval_fraction` of the stream is held out, as for text files."""
  if not 0.0 < eval_fraction < 1.0:
    raise UserError(f"data.eval_fraction={eval_fraction} must be strictly between 0 and 1")
  num_eval = max(1, int(len(tokens) * eval_fraction))
  if num_eval >= len(tokens):
    raise UserError(f"{len(tokens)} tokens cannot be split into a training and a held-out part; use more data")
  return tokens[:-num_eval], tokens[-num_eval:]
