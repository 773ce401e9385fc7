"""Atomic file writes: a reader (another process, a resumed run) sees the old file or the new one, never half."""

import pathlib


def write_text_atomically(path: pathlib.Path, text: str) -> None:
  temporary = path.with_name(path.name + ".tmp")
  temporary.write_text(text)
  temporary.replace(path)
