"""Backbones by name (`model.backbone`), one call protocol for all of them.

`module(z_BxL, t_B, label_B=None, *, dropout_key=None) -> logits_BxLxV` (float32, over the V real
tokens): z holds ids in [0, V] (V = mask), t the diffusion time, label the class (None or the null
class num_classes = unconditional; only class-conditional backbones read it), dropout_key turns
dropout on (training). Backbones that split their last layer off (the transformer) also have
`features(z, t, label, dropout_key=...)`, `head_logits(h)`, `head_loss(h_NxD, x0_N, **loss)` (the output
layer fused with the loss: fused_head.py) and `weighted_nll(h_NxD, x0_N, weight_N)` (the same for a weighted sum
of cross-entropies, its gradient made in the forward pass), so the loss keeps no [N, V] array and can apply the
output layer at masked positions only.

A backbone is a module with `build(config, modality, requirements) -> backbone.Backbone` (its config dataclass
and `make(rngs)`) and, next to it, its own keys (`config_group()`, model.<name>.*) and checks (`check_config`):
a built-in one is listed in BUILTIN, one outside the package is named by its module path (md4_jax/parts.py).

| name | modality | keys |
|---|---|---|
| transformer | text (or any token sequence) | model.transformer.* |
| unet | image | model.unet.* |
| uvit | image | model.uvit.* |
"""

from md4_jax import parts
from md4_jax.models import transformer, unet, uvit
from md4_jax.models.layers import LAYER_AXIS  # noqa: F401 (the optimizer reads it)

BUILTIN = {"transformer": transformer, "unet": unet, "uvit": uvit}
BACKBONES = tuple(BUILTIN)


def get(name: str):
  """The backbone module called `name` (built-in, or a module path); UserError naming the choices."""
  return parts.find("backbone", name, BUILTIN)


class Network:
  """A backbone with one call's labels and dropout key bound: `net(z_BxL, t_B) -> logits_BxLxV`, the
  form samplers and objectives take; `features` / `head_logits` where the backbone has them."""

  def __init__(self, module, label_B=None, dropout_key=None, context: dict | None = None):
    """context: keyword arguments every call passes (a call's own override them): a training step's annealed
    attention mask (Objective.network_context)."""
    self.module, self.label_B, self.dropout_key, self.context = module, label_B, dropout_key, context or {}

  def __call__(self, z_BxL, t_B, **context):
    """context: what a backbone may take besides (positions_L, mask: the transformer's block layouts)."""
    return self.module(z_BxL, t_B, self.label_B, dropout_key=self.dropout_key, **{**self.context, **context})

  def features(self, z_BxL, t_B, **context):
    return self.module.features(z_BxL, t_B, self.label_B, dropout_key=self.dropout_key, **{**self.context, **context})

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
