"""Atomic file writes: a reader (another process, a resumed run) sees the old file or the new one, never half."""

import io
import pathlib

import numpy as np


def write_text_atomically(path: pathlib.Path, text: str) -> None:
  temporary = path.with_name(path.name + ".tmp")
  temporary.write_text(text)
  temporary.replace(path)


def write_png_atomically(path: pathlib.Path, pixels_HxWx3: np.ndarray) -> None:
  """A uint8 RGB array as a PNG file."""
  from PIL import Image  # noqa: PLC0415 (only image runs write pictures)

  buffer = io.BytesIO()
  Image.fromarray(np.asarray(pixels_HxWx3, np.uint8), mode="RGB").save(buffer, format="PNG")
  temporary = path.with_name(path.name + ".tmp")
  temporary.write_bytes(buffer.getvalue())
  temporary.replace(path)
