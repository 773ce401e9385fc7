"""Samples written as they are drawn, so sampling holds one batch (or one segment of a long sequence) in memory.

Text: stem.txt (each sample under a `=== sample i ===` line) and stem.jsonl (one object per sample: its text, why
it stopped and its length in characters (engine/sample_ends.py: at end-of-text, a stop string, or its length),
label, the run's record, sampler settings, network calls and seconds of its batch). A row may arrive in
segments (BD3's long samples): its bytes are decoded incrementally (a character split between segments stays
whole) into a file of its own beside the samples, stem_sampleI.txt.partial, which grows as the segments come
and is copied into stem.txt and stem.jsonl once its batch is drawn. Images: stem.jsonl
(tokens), stem.png (a grid of the first batch) and stem_process.png (the reverse process of its first rows).

Files are written as `NAME.partial` and renamed when closed (in a bucket: staged locally, uploaded when closed),
so a reader never sees half a file; a failure (a full disk) removes the partial files (a Ctrl-C, which ends the
process at once, leaves them: delete them, or read them).
"""

import io
import json
import shutil
import tempfile

import numpy as np
from etils import epath

from md4_jax.data import pictures
from md4_jax.engine.sample_ends import Ending
from md4_jax.storage import files
from md4_jax.storage import paths as storage

PREVIEW_CHARS = 2000  # of each of the first batch's texts, kept for the terminal
_CHUNK = 1 << 20  # characters copied at a time from a row's spooled text


class SampleFiles:
  """Usage: per batch `begin(first_index, labels_B)`, `add(tokens_BxS, order_BxS)` once per segment, then
  `end(nfe, seconds)`; finally `close()` (or `discard()` after a failure)."""

  def __init__(self, stem: epath.Path, modality, record: dict, settings: dict, labelled: bool, strip_rows: int = 4,
               stops=(), keep: int = 0):
    """stops: strings a text sample ends at (--stop); it also ends at the tokenizer's end-of-text, if any, but not
    in its first `keep` tokens (a --prompt)."""
    self.stem, self.modality, self.record, self.settings = stem, modality, record, settings
    self.stops, self.keep = stops, keep
    self.labelled, self.strip_rows = labelled, strip_rows
    self.text = modality.kind == "text"
    stem.parent.mkdir(parents=True, exist_ok=True)
    self.remote = storage.is_remote(stem)
    self.staging = epath.Path(tempfile.mkdtemp(prefix="md4_jax_samples_")) if self.remote else stem.parent
    suffixes = (".txt", ".jsonl") if self.text else (".jsonl",)
    self.finals = [stem.with_name(stem.name + suffix) for suffix in suffixes]
    self.partials = [self.staging / (final.name + ".partial") for final in self.finals]
    self.handles = [open(partial, "w", encoding="utf-8") for partial in self.partials]  # noqa: SIM115
    self.pictures = []  # (final path, RGB array) of the first batch, written at close
    self.previews = []  # the first batch's texts, cut at PREVIEW_CHARS
    self.count = 0  # samples written

  def begin(self, first_index: int, labels_B: np.ndarray, in_segments: bool = False) -> None:
    """in_segments: rows come in pieces (long samples): each row's text goes to a file of its own,
    stem_sampleI.txt.partial, as the pieces come (the progress can be read there), and joins the others at end()."""
    self.first_index, self.labels = first_index, np.asarray(labels_B)
    rows = len(self.labels)
    if self.text:  # where each row ends (decoding as it comes) and a text buffer per row
      end_id = getattr(self.modality.tokenizer, "eos_id", None)
      self.endings = [Ending(self.modality.decode_bytes, end_id, self.stops, self.keep) for _ in range(rows)]
      self.row_paths = [self.staging / f"{self.stem.name}_sample{first_index + i}.txt.partial"
                        for i in range(rows)] if in_segments else []
      self.rows = ([open(path, "w+", encoding="utf-8") for path in self.row_paths] if in_segments  # noqa: SIM115
                   else [io.StringIO() for _ in range(rows)])
    self.batch_tokens, self.batch_order, self.batch_length = [], [], 0

  def add(self, tokens_BxS: np.ndarray, order_BxS: np.ndarray) -> None:
    """The next segment of every row of the batch (the whole rows when they come in one piece)."""
    tokens_BxS = np.asarray(tokens_BxS)
    self.batch_length += tokens_BxS.shape[1]
    if self.text:
      for row, ending, tokens_S in zip(self.rows, self.endings, tokens_BxS):
        row.write(ending.feed(tokens_S))
        row.flush()
    else:
      self.batch_tokens.append(tokens_BxS)
      self.batch_order.append(np.asarray(order_BxS))

  def end(self, nfe: int, seconds: float) -> None:
    """The batch is drawn: its rows go to the files."""
    rows = len(self.labels)
    tokens_per_sec = round(self.batch_length * rows / max(seconds, 1e-9), 1)
    tail = {**self.record, "sampler": self.settings, "nfe": nfe, "seconds": round(seconds, 3),
            "tokens_per_sec": tokens_per_sec}
    if self.text:
      self._end_text(tail)
    else:
      self._end_images(tail)
    self.count += rows

  def _end_text(self, tail: dict) -> None:
    text_file, jsonl_file = self.handles
    for offset, row in enumerate(self.rows):
      self.rows[offset] = None
      row.write(self.endings[offset].finish())
      index = self.first_index + offset
      row.seek(0)
      text_file.write(f"=== sample {index} ===\n")
      jsonl_file.write(json.dumps({"index": index})[:-1] + ', "text": "')
      if self.count == 0:
        self.previews.append(row.read(PREVIEW_CHARS))
        row.seek(0)
      chunk = row.read(_CHUNK)
      while chunk:
        text_file.write(chunk)
        jsonl_file.write(json.dumps(chunk, ensure_ascii=False)[1:-1])  # escaping is per character: chunks join
        chunk = row.read(_CHUNK)
      row.close()
      text_file.write("\n\n")
      jsonl_file.write('", ' + json.dumps({**self.endings[offset].record(), **self._label(offset), **tail})[1:] + "\n")
    for path in self.row_paths:
      path.unlink()
    self.row_paths = []

  def _end_images(self, tail: dict) -> None:
    tokens_BxL, order_BxL = np.concatenate(self.batch_tokens, 1), np.concatenate(self.batch_order, 1)
    (jsonl_file,) = self.handles
    for offset, row in enumerate(tokens_BxL):
      jsonl_file.write(json.dumps({"index": self.first_index + offset, **self.modality.describe(row),
                                   **self._label(offset), **tail}) + "\n")
    if self.count == 0:  # the first batch: the grid and the reverse process
      grid, strip = self.stem.with_name(self.stem.name + ".png"), self.stem.with_name(self.stem.name + "_process.png")
      self.pictures = [(grid, pictures.sample_grid(tokens_BxL, self.modality)),
                       (strip, pictures.reverse_process_strip(tokens_BxL[:self.strip_rows],
                                                              order_BxL[:self.strip_rows], self.modality))]

  def _label(self, offset: int) -> dict:
    return {"label": int(self.labels[offset])} if self.labelled else {}

  def close(self) -> tuple:
    """Moves the finished files into place; returns their paths (the pictures first, then .txt / .jsonl)."""
    for handle in self.handles:
      handle.close()
    for partial, final in zip(self.partials, self.finals):
      if self.remote:
        files.upload(partial, final)
        partial.unlink()
      else:
        partial.replace(final)
    for path, pixels in self.pictures:
      files.write_png_atomically(path, pixels)
    if self.remote:
      shutil.rmtree(self.staging, ignore_errors=True)
    return (*[path for path, _ in self.pictures], *self.finals)

  def discard(self) -> None:
    """After a failure: the partial files go (a full disk gets its space back); finished files are untouched."""
    for handle in self.handles:
      handle.close()
    for row in getattr(self, "rows", None) or []:
      if row is not None:
        row.close()
    for partial in [*self.partials, *getattr(self, "row_paths", [])]:
      partial.unlink(missing_ok=True)
    if self.remote:
      shutil.rmtree(self.staging, ignore_errors=True)
