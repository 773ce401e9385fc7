"""Backbones by name (`model.backbone`), one call protocol for all of them.

`module(z_BxL, t_B, label_B=None, *, dropout_key=None) -> logits_BxLxV` (float32, over the V real
tokens): z holds ids in [0, V] (V = mask), t the diffusion time, label the class (None or the null
class num_classes = unconditional; only class-conditional backbones read it), dropout_key turns
dropout on (training). Backbones that split their last layer off (the transformer) also have
`features(z, t, label, dropout_key=...)`, `head_logits(h)`, `head_loss(h_NxD, x0_N, **loss)` (the output
layer fused with the loss: fused_head.py) and `weighted_nll(h_NxD, x0_N, weight_N)` (the same for a weighted sum
of cross-entropies, its gradient made in the forward pass), so the loss keeps no [N, V] array and can apply the
output layer at masked positions only.

To add a backbone: a module here with `build(config, modality, requirements) -> backbone.Backbone` (its config
dataclass and `make(rngs)`), found by its name, and its keys in configs/base.py (model.<name>.*).

| name | modality | keys |
|---|---|---|
| transformer | text (or any token sequence) | model.num_layers, width, num_heads, mlp_ratio, mlp_hidden, cond_dim, positions, scan_layers, scan_unroll |
| unet | image | model.unet.* |
| uvit | image | model.uvit.* |
"""

import importlib
import pkgutil

from md4_jax.models.backbone import Backbone
from md4_jax.models.layers import LAYER_AXIS  # noqa: F401 (the optimizer reads it)


def _module(name: str):
  return importlib.import_module(f"{__name__}.{name}")


# The modules of this package that define `build`: a backbone is its module's name.
BACKBONES = tuple(sorted(info.name for info in pkgutil.iter_modules(__path__) if hasattr(_module(info.name), "build")))


def backbone(config, modality, requirements=None) -> Backbone:
  """(config, make) of config.model.backbone over `modality`; ValueError for combinations that cannot work (an
  image backbone on text, a causal objective on a bidirectional image network).

  requirements: what the objective needs of the network ({"causal": True, "time_conditioning": False} for the
  autoregressive baseline).
  """
  name = config.model.backbone
  if name not in BACKBONES:
    raise ValueError(f"model.backbone={name!r}: choose one of {BACKBONES}")
  return _module(name).build(config, modality, dict(requirements or {}))


class Network:
  """A backbone with one call's labels and dropout key bound: `net(z_BxL, t_B) -> logits_BxLxV`, the
  form samplers and objectives take; `features` / `head_logits` where the backbone has them."""

  def __init__(self, module, label_B=None, dropout_key=None):
    self.module, self.label_B, self.dropout_key = module, label_B, dropout_key

  def __call__(self, z_BxL, t_B, **context):
    """context: what a backbone may take besides (positions_L, mask: the transformer's block layouts)."""
    return self.module(z_BxL, t_B, self.label_B, dropout_key=self.dropout_key, **context)

  def features(self, z_BxL, t_B, **context):
    return self.module.features(z_BxL, t_B, self.label_B, dropout_key=self.dropout_key, **context)

  def head_logits(self, h_xF):
    return self.module.head_logits(h_xF)

  @property
  def splits_head(self) -> bool:
    """Whether the backbone has features / head_logits / head_loss (the transformer; image backbones do not)."""
    return self.module.splits_head

  def head_loss(self, h_NxF, x0_N, **loss):
    return self.module.head_loss(h_NxF, x0_N, **loss)

  def weighted_nll(self, h_NxF, x0_N, weight_N):
    return self.module.weighted_nll(h_NxF, x0_N, weight_N)
