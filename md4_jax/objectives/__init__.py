"""Training objectives by name (`config.objective`): what a step optimises, what eval reports, how to sample.

Every objective implements the protocol in base.py (`Objective`: every method present, defaults there); its own
config checks, sampler table and evaluation extras live in its module. To add one: write a module here with a
subclass and `OBJECTIVE = <the subclass>`, and its keys (if any) in configs/base.py (docs/design.md).
"""

import importlib
import pkgutil
from typing import Callable, NamedTuple

from md4_jax import models
from md4_jax.objectives.base import Objective

# The modules of this package that name an OBJECTIVE, by that objective's name.
OBJECTIVES = {objective.name: objective for objective in (
    getattr(importlib.import_module(f"{__name__}.{info.name}"), "OBJECTIVE", None)
    for info in pkgutil.iter_modules(__path__)) if objective is not None}
NAMES = tuple(OBJECTIVES)


def get(name: str):
  """The objective class called `name`; ValueError naming the choices otherwise."""
  if name not in OBJECTIVES:
    raise ValueError(f"objective={name!r}: choose one of {NAMES}")
  return OBJECTIVES[name]


class Model(NamedTuple):
  """What a run trains, from its config: the objective, the backbone's config and `make(rngs)` for the whole
  module (the backbone, with the objective's own parameters beside it)."""
  objective: Objective
  backbone_config: object
  make: Callable


def build_model(config, modality) -> Model:
  """The one recipe (Experiment, --mode params): ValueError for a backbone and objective that cannot work."""
  objective = get(config.objective)(config, modality.vocab_size)
  backbone = models.backbone(config, modality, objective.network_requirements)
  return Model(objective, backbone.config, objective.wrap_model(backbone.make))
