"""text8: the first 10^8 characters of a cleaned English Wikipedia (Mahoney), as 27 character ids.

`prepare` turns text8.zip into `DIR/text8/{train,validation,test}.npy` (uint8
ids of `tokenizers.TEXT8_ALPHABET`: space 0, a-z 1..26) and `meta.json`,
using the standard split: first 90M characters train, next 5M validation,
last 5M test. `load` memory-maps the splits.

Checksum: no public SHA-256 of text8.zip was found. What was found, and is
not enforced (the content check below is exact anyway): the zip is 31,344,016
bytes (the size the TensorFlow word2vec tutorial checks), and its SHA-1 is
6c70299b93b7e1f927b42cd8f6ac1a31547c7a2e, the text8 member's
0dc3edebc970dcc96137e7deda4d9995af9d93de (both from dmlc/gluon-nlp,
src/gluonnlp/data/corpora/large_text_compression_benchmark.py, class Text8).
"""

import json
import os
import pathlib
import zipfile

import numpy as np

from md4_jax.data import download
from md4_jax.data.tokenizers import TEXT8_ALPHABET
from md4_jax.errors import UserError
from md4_jax.storage import files

URL = "http://mattmahoney.net/dc/text8.zip"
ZIP_NAME, MEMBER = "text8.zip", "text8"
SPLITS = ("train", "validation", "test")
SPLIT_SIZES = (90_000_000, 5_000_000, 5_000_000)  # characters; 100M in all
PREPARE_COMMAND = "python launch.py --config configs/text8.py --workdir DIR --mode prepare"


def _meta(split_sizes) -> dict:
  return {"source": "text8", "splits": dict(zip(SPLITS, (int(n) for n in split_sizes))),
          "tokenizer": {"kind": "char", "alphabet": TEXT8_ALPHABET}}


def _read_meta(out_dir: pathlib.Path) -> dict | None:
  try:
    return json.loads((out_dir / "meta.json").read_text())
  except (OSError, ValueError):
    return None


def _zip_path(out_dir: pathlib.Path, manual_dir: str) -> pathlib.Path:
  """The manual copy when `manual_dir` is set (a directory holding text8.zip, or the zip itself), else a download."""
  if manual_dir:
    given = pathlib.Path(manual_dir).expanduser()
    path = given if given.suffix == ".zip" else given / ZIP_NAME
    if not path.is_file():
      raise UserError(f"data.manual_dir={manual_dir!r}: {path} does not exist; put {ZIP_NAME} (from {URL}) "
                      "there, or leave data.manual_dir empty to download it")
    return path
  if (out_dir / ZIP_NAME).is_file():  # where releases before downloads/ put it
    return out_dir / ZIP_NAME
  return download.fetch(URL, out_dir / "downloads" / ZIP_NAME, sha256=None,
                        what="text8 (text8.zip, 31,344,016 bytes)",
                        manual_hint=f"or pass --config.data.manual_dir=DIR holding {ZIP_NAME}")


def _read_text(zip_path: pathlib.Path) -> bytes:
  try:
    with zipfile.ZipFile(zip_path) as archive:
      if MEMBER not in archive.namelist():
        raise UserError(f"{zip_path} has no member {MEMBER!r} (it holds {archive.namelist()[:5]}); "
                        f"it is not text8.zip from {URL}")
      return archive.read(MEMBER)
  except zipfile.BadZipFile as error:
    raise UserError(f"{zip_path} is not a valid zip file ({error}); delete it and download {URL} again") from error


def encode(text_bytes: bytes) -> np.ndarray:
  """text8 bytes -> [num_chars] uint8 ids of TEXT8_ALPHABET; any other byte is an error naming it."""
  lookup = np.full(256, 255, np.uint8)  # 255: not in the alphabet
  lookup[np.frombuffer(TEXT8_ALPHABET.encode("ascii"), np.uint8)] = np.arange(len(TEXT8_ALPHABET))
  ids = lookup[np.frombuffer(text_bytes, np.uint8)]
  bad_positions = np.flatnonzero(ids == 255)
  if bad_positions.size:
    bad_bytes = sorted(set(text_bytes[i] for i in bad_positions[:1000]))
    raise UserError(f"text8 must hold only a-z and spaces, but {bad_positions.size} bytes are other characters "
                    f"(byte values {bad_bytes[:10]}, first at offset {bad_positions[0]}); use the original {URL}")
  return ids


def _save_atomically(path: pathlib.Path, array: np.ndarray) -> None:
  """Writes under a temporary name, then renames, so `path` never holds a half-written array."""
  temporary = path.with_name(path.name + ".tmp")
  with open(temporary, "wb") as file:  # a file object: np.save would append ".npy" to a name
    np.save(file, array)
    file.flush()
    os.fsync(file.fileno())
  temporary.replace(path)


def prepared_dir(data_dir: pathlib.Path) -> pathlib.Path:
  """data_dir/text8: where `prepare` writes and `load` reads."""
  return pathlib.Path(data_dir).expanduser() / "text8"


def prepare(data_dir: pathlib.Path, manual_dir: str = "", split_sizes=SPLIT_SIZES) -> pathlib.Path:
  """Writes DIR/text8/{train,validation,test}.npy and meta.json; returns DIR/text8. A no-op when already done.

  `split_sizes` (characters per split) is the official 90M/5M/5M; tests pass a small one.
  """
  out_dir = prepared_dir(data_dir)
  meta = _meta(split_sizes)
  if _read_meta(out_dir) == meta and all((out_dir / f"{name}.npy").is_file() for name in SPLITS):
    return out_dir
  out_dir.mkdir(parents=True, exist_ok=True)
  zip_path = _zip_path(out_dir, manual_dir)
  text_bytes = _read_text(zip_path)
  if len(text_bytes) != sum(split_sizes):
    raise UserError(f"{zip_path}: the text8 member has {len(text_bytes):,} characters, expected "
                    f"{sum(split_sizes):,}; the file is truncated or not text8 (get {URL} again)")
  ids = encode(text_bytes)
  # meta.json marks a finished prepare: drop any old one first, write the new one last.
  (out_dir / "meta.json").unlink(missing_ok=True)
  boundaries = np.cumsum((0,) + tuple(split_sizes))
  for name, start, stop in zip(SPLITS, boundaries[:-1], boundaries[1:]):
    _save_atomically(out_dir / f"{name}.npy", ids[start:stop])
  files.write_text_atomically(out_dir / "meta.json", json.dumps(meta, indent=1))
  return out_dir


def load(data_dir: pathlib.Path) -> dict[str, np.ndarray]:
  """{"train", "validation", "test"} -> memory-mapped [num_chars] uint8 ids."""
  out_dir = prepared_dir(data_dir)
  meta = _read_meta(out_dir)
  if meta is None:
    raise UserError(f"text8 is not prepared in {out_dir}: run `{PREPARE_COMMAND}` first "
                    "(with the same data.dir), or pass --config.data.dir=DIR where it was prepared")
  splits = {}
  for name, num_tokens in meta["splits"].items():
    path = out_dir / f"{name}.npy"
    tokens = np.load(path, mmap_mode="r") if path.is_file() else None
    if tokens is None or tokens.shape != (num_tokens,):
      raise UserError(f"{path} is missing or damaged (meta.json says {num_tokens} tokens); delete {out_dir} "
                      f"and run `{PREPARE_COMMAND}` again")
    splits[name] = tokens
  return splits
