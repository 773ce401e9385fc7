"""Data: sources by name (text and image), tokenizers, release readers, and the batch pipeline."""

import pathlib
from collections.abc import Callable

from md4_jax.data import mirror
from md4_jax.errors import UserError
from md4_jax.storage import paths as storage


def data_dir(data_config) -> pathlib.Path:
  """data.dir as a local directory, where `--mode prepare` writes datasets and training reads them: itself,
  or for a bucket (gs://) its local mirror (data/mirror.py)."""
  storage.path(data_config.dir)  # refuses the schemes that are not supported, in one line
  return mirror.local(data_config.dir)


def read_prepared(data_config, directory: pathlib.Path, prepare_flags: str = "") -> None:
  """Before a reader opens the dataset in `directory` (under data_dir): brought down from a bucket data.dir
  (`prepare_flags`: what `--mode prepare` needs besides the config to write it)."""
  mirror.pull(data_config.dir, directory, required=True, prepare_flags=prepare_flags)


def prepare_into(data_config, directory: pathlib.Path, prepare: Callable[[], pathlib.Path]) -> str:
  """Runs `prepare` (which writes `directory`, under data_dir) and, for a bucket data.dir, uploads it; the
  bucket's finished copy is pulled first, so a prepared dataset is kept, not redone. Returns where it is."""
  if storage.is_remote(data_config.manual_dir):
    raise UserError(f"data.manual_dir={data_config.manual_dir!r}: the release files must be in a local directory "
                    "(gcloud storage cp -r the files to one); data.dir may be a bucket")
  mirror.pull(data_config.dir, directory, required=False)
  written = prepare()
  mirror.push(data_config.dir, written)
  return mirror.remote_of(data_config.dir, written) if storage.is_remote(data_config.dir) else str(written)


def data_file(data_config) -> str:
  """data.path as a local file (a bucket object is downloaded into the mirror; again only when it changed)."""
  return mirror.local_file(data_config.path) if data_config.path else data_config.path


def source_subset(data_config) -> str:
  """The chosen source's own data.<source>.subset (fineweb_edu, imagenet64), or "" for a source without one."""
  own = data_config.get(data_config.source)
  return own.subset if own is not None and "subset" in own else ""
