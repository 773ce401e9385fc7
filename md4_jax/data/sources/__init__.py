"""Data sources by name (`data.source`): one module each, carrying what the source is: its docstring (what it is,
where it comes from, its licence), `MODALITY` ("text" | "image"), `load(data_config, split, saved_modality) ->
rows.Data`, `modality(data_config)` (vocabulary and shape without reading data where possible), optionally
`prepare(data_config) -> str` (`--mode prepare`; none: it reads its files directly), `HELD_OUT` (default
("validation",); eval.split picks the one evaluated in training) and its own keys (`config_group()`,
data.<name>.*, checked by `check_config(config)`).

`saved_modality` is a run's own (from its workdir) or None; text sources reuse its tokenizer. A source outside the
package is a module of the same form named by its path (md4_jax/parts.py).
"""

import dataclasses
from typing import Callable

from md4_jax import parts
from md4_jax.data.sources import (
  cifar10,
  digits,
  embedded,
  fineweb_edu,
  imagenet64,
  lm1b,
  openwebtext,
  text8,
  textfile,
  tokens,
)
from md4_jax.errors import UserError

BUILTIN = {"embedded": embedded, "textfile": textfile, "tokens": tokens, "text8": text8, "openwebtext": openwebtext,
           "fineweb_edu": fineweb_edu, "lm1b": lm1b, "digits": digits, "cifar10": cifar10, "imagenet64": imagenet64}
NAMES = tuple(BUILTIN)


@dataclasses.dataclass(frozen=True)
class Source:
  """A source module read once: what the pipeline and the checks use."""
  name: str
  kind: str  # "text" | "image"
  load: Callable
  modality: Callable
  prepare: Callable | None = None  # None: nothing to download or preprocess
  held_out: tuple = ("validation",)  # the held-out splits; eval.split picks the one evaluated in training
  module: object = None  # the module: its own keys (config_group, data.<name>.*) and check_config

  @classmethod
  def of_module(cls, name: str, module) -> "Source":
    kind = getattr(module, "MODALITY", None)
    if kind not in ("text", "image") or not all(hasattr(module, attr) for attr in ("load", "modality")):
      raise UserError(f"data.source={name!r}: the module must define MODALITY ('text' or 'image'), "
                      "load(data_config, split, saved_modality) and modality(data_config) (docs/design.md, "
                      "'Adding a part')")
    return cls(name, kind, module.load, module.modality, getattr(module, "prepare", None),
               tuple(getattr(module, "HELD_OUT", ("validation",))), module)


def get(name: str) -> Source:
  """The source called `name` (built-in, or a module path); UserError naming the choices."""
  return Source.of_module(name, parts.find("source", name, BUILTIN))
