"""Data sources by name (`data.source`): each one entry that knows its held-out splits, its modality,
how to prepare it (None: it reads its files directly) and how to load it.

`load(data_config, split, saved_modality) -> rows.Data`: `saved_modality` is a run's own (from its
workdir) or None; text sources reuse its tokenizer. `modality(data_config)` gives the vocabulary and
shape without reading data (for --mode params).

A source outside the package is a module named by its path (md4_jax/parts.py): `KIND = "source"`,
`MODALITY` ("text" | "image"),
`load` and `modality` as above, optionally `prepare(data_config) -> str`, `HELD_OUT` (default ("validation",)),
and its own keys (`config_group()`, data.<name>.*) with their checks (`check_config(config)`).
"""

import dataclasses
from typing import Callable

from md4_jax import parts
from md4_jax.data import image_sources, text_sources, token_files
from md4_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  kind: str  # "text" | "image"
  load: Callable
  modality: Callable
  prepare: Callable | None = None  # None: nothing to download or preprocess
  held_out: tuple = ("validation",)  # the held-out splits; eval.split picks the one evaluated in training
  module: object = None  # the module holding its own keys (config_group, data.<name>.*) and check_config

  @classmethod
  def of_module(cls, name: str, module) -> "Source":
    """A source outside the package, from its module (see the module docstring)."""
    kind = getattr(module, "MODALITY", None)
    if kind not in ("text", "image") or not all(hasattr(module, attr) for attr in ("load", "modality")):
      raise UserError(f"data.source={name!r}: the module must define MODALITY ('text' or 'image'), "
                      "load(data_config, split, saved_modality) and modality(data_config)")
    return cls(name, kind, module.load, module.modality, getattr(module, "prepare", None),
               tuple(getattr(module, "HELD_OUT", ("validation",))), module)


_SOURCES = (
    Source("embedded", "text", text_sources.load_embedded, text_sources.nominal_modality),
    Source("textfile", "text", text_sources.load_textfile, text_sources.textfile_modality),
    Source("tokens", "text", text_sources.load_token_file, text_sources.token_file_modality, module=token_files),
    Source("text8", "text", text_sources.load_text8, text_sources.nominal_modality, text_sources.prepare_text8,
           held_out=("validation", "test")),
    *(Source(name, "text", text_sources.load_packed, text_sources.nominal_modality, text_sources.prepare_packed)
      for name in ("openwebtext", "fineweb_edu", "lm1b")),
    Source("digits", "image", image_sources.load_digits, image_sources.digits_modality),
    *(Source(name, "image", image_sources.load_release, image_sources.release_modality,
             image_sources.prepare_release) for name in ("cifar10", "imagenet64")),
)
SOURCES = {source.name: source for source in _SOURCES}
NAMES = tuple(SOURCES)


def get(name: str) -> Source:
  """The source called `name` (built-in, or a module path); UserError naming the choices."""
  found = parts.find("source", name, SOURCES)
  return found if isinstance(found, Source) else Source.of_module(name, found)
