"""Data: sources by name (text and image), tokenizers, release readers, and the batch pipeline."""

import pathlib


def data_dir(data_config) -> pathlib.Path:
  """data.dir, where `--mode prepare` writes datasets and training reads them."""
  return pathlib.Path(data_config.dir).expanduser()
