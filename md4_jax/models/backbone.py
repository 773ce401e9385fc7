"""What every backbone module shares: the (config, make) pair its `build` returns, and the keys and checks common
to all of them (models/__init__.py loads a backbone by its name)."""

from typing import Callable, NamedTuple


class Backbone(NamedTuple):
  config: object  # the backbone's dataclass: summary(), time_conditioning, num_classes
  make: Callable  # make(rngs) -> the module


def shared_keys(config, requirements: dict) -> dict:
  """The keys every backbone reads: time_conditioning (unless the objective fixes it), dtype, remat, attention."""
  model = config.model
  return {"time_conditioning": requirements.get("time_conditioning", model.time_conditioning), "dtype": model.dtype,
          "remat": model.remat, "attention": model.attention}


def classes(config, modality) -> int:
  """The classes the network is conditioned on (0: unconditional); ValueError when the data has no labels."""
  if not config.model.class_conditional:
    return 0
  if not modality.num_classes:
    raise ValueError(f"model.class_conditional=True, but data.source={config.data.source!r} has no class labels; "
                     "set model.class_conditional=False or use a labelled image source")
  return modality.num_classes


def image_only(config, modality, requirements: dict) -> None:
  """ValueError for an image backbone on text, or under an objective that needs a causal network."""
  name = config.model.backbone
  if modality.kind != "image":
    raise ValueError(f"model.backbone={name!r} models images, but data.source={config.data.source!r} is "
                     f"{modality.kind}; use model.backbone='transformer'")
  if requirements.get("causal") or requirements.get("block_masks"):
    need = "a causal network" if requirements.get("causal") else "attention under block masks"
    raise ValueError(f"objective={config.objective!r} needs {need}; model.backbone={name!r} has no attention "
                     "masks (use model.backbone='transformer')")
