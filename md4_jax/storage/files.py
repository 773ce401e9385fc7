"""Atomic file writes: a reader (another process, a resumed run) sees the old file or the new one, never half.

Locally: a temporary file renamed over the target. On an object store one object write is already atomic
(the new object replaces the old one whole when the upload completes), and a rename is a copy, so the
object is written directly.
"""

import io
import pathlib
import shutil

import numpy as np
from etils import epath

from md4_jax.storage import paths as storage


def write_bytes_atomically(path: epath.Path, data: bytes) -> None:
  path = epath.Path(path)
  if storage.is_remote(path):
    path.write_bytes(data)
    return
  temporary = path.with_name(path.name + ".tmp")
  temporary.write_bytes(data)
  temporary.replace(path)


def write_text_atomically(path: epath.Path, text: str) -> None:
  write_bytes_atomically(path, text.encode("utf-8"))


def write_png_atomically(path: epath.Path, pixels_HxWx3: np.ndarray) -> None:
  """A uint8 RGB array as a PNG file."""
  from PIL import Image  # noqa: PLC0415 (only image runs write pictures)

  buffer = io.BytesIO()
  Image.fromarray(np.asarray(pixels_HxWx3, np.uint8), mode="RGB").save(buffer, format="PNG")
  write_bytes_atomically(path, buffer.getvalue())


def write_figure_atomically(path: epath.Path, figure, dpi: int = 100) -> None:
  """A matplotlib figure as a PNG file (rendered in memory: matplotlib writes only local files)."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=dpi)
  write_bytes_atomically(path, buffer.getvalue())


def upload(local_file, target: epath.Path) -> None:
  """A local file to `target` (a bucket object, written whole when the copy completes), in chunks: a large file
  (a long sample, a profile trace) need not fit in memory."""
  with open(local_file, "rb") as source, epath.Path(target).open("wb") as destination:
    shutil.copyfileobj(source, destination, 1 << 24)


def upload_tree(local_directory, target: epath.Path) -> None:
  """Every file under a local directory to the same relative path under `target` (staged files of a bucket run)."""
  local_directory = pathlib.Path(local_directory)
  for path in local_directory.rglob("*"):
    if path.is_file():
      destination = epath.Path(target) / str(path.relative_to(local_directory))
      destination.parent.mkdir(parents=True, exist_ok=True)
      upload(path, destination)
