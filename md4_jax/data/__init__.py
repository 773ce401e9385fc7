"""Data: sources by name (text and image), tokenizers, release readers, and the batch pipeline."""

import pathlib

from md4_jax.errors import UserError


def data_dir(data_config) -> pathlib.Path:
  """data.dir, where `--mode prepare` writes datasets and training reads them (a local directory)."""
  if "://" in str(data_config.dir):
    # The readers memory-map token files and hand tfds/grain local paths; a bucket would need a copy step.
    raise UserError(f"data.dir={data_config.dir!r}: prepared data must be in a local directory (or a gcsfuse "
                    "mount of the bucket, e.g. /gcs/BUCKET/data); the workdir may be gs:// (see docs/scaling.md)")
  return pathlib.Path(data_config.dir).expanduser()
