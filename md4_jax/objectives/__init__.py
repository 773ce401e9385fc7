"""Training objectives by name (`config.objective`): what a step optimises, what eval reports, how to sample.

Every objective implements the protocol in base.py (`Objective`: every method present, defaults there). An
objective is a module with `OBJECTIVE = <the subclass>` and, next to it, its own keys (`config_group()`,
diffusion.<name>.*; checked by the class's `check_config`), sampler table and evaluation extras: a built-in one is
listed in BUILTIN, one outside the package is named by its module path (md4_jax/parts.py, docs/design.md).
"""

from typing import Callable, NamedTuple

from md4_jax import models, parts
from md4_jax.objectives import ar, bd3, genmd4, md4
from md4_jax.objectives.base import Objective

BUILTIN = {module.OBJECTIVE.name: module for module in (md4, genmd4, bd3, ar)}
NAMES = tuple(BUILTIN)


def get(name: str):
  """The objective class called `name` (built-in, or a module path); UserError naming the choices."""
  return parts.find("objective", name, BUILTIN).OBJECTIVE


class Parts(NamedTuple):
  """The two parts a model is built from: found by name once per run (`chosen`, in run/config_check.py's
  validation) and handed down, so nothing later looks them up again."""
  objective: type  # the objective's class
  backbone: object  # the backbone's module (its `build`)


def chosen(config) -> Parts:
  """The objective and backbone config names (built-in, or module paths); UserError naming the choices."""
  return Parts(get(config.objective), models.get(config.model.backbone))


class Model(NamedTuple):
  """What a run trains, from its config: the objective, the backbone's config and `make(rngs)` for the whole
  module (the backbone, with the objective's own parameters beside it)."""
  objective: Objective
  backbone_config: object
  make: Callable


def build_model(config, modality, parts: Parts) -> Model:
  """The one recipe (Experiment, --mode params): ValueError for a backbone and objective that cannot work (an
  image backbone on text, a causal objective on a bidirectional image network)."""
  objective = parts.objective(config, modality.vocab_size)
  backbone = parts.backbone.build(config, modality, dict(objective.network_requirements))
  return Model(objective, backbone.config, objective.wrap_model(backbone.make))
