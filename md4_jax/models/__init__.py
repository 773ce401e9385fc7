"""Backbones by name (`model.backbone`), one call protocol for all of them.

`module(z_BxD, t_B, label_B=None, *, dropout_key=None) -> logits_BxDxV` (float32, over the V real
tokens): z holds ids in [0, V] (V = mask), t the diffusion time, label the class (None or the null
class num_classes = unconditional; only class-conditional backbones read it), dropout_key turns
dropout on (training). Backbones that split their last layer off (the transformer) also have
`features(z, t, label, dropout_key=...)`, `head_logits(h)` and `head_loss(h_NxD, x0_N, **loss)` (the output
layer fused with the loss: fused_head.py), so the loss keeps no [N, V] array and can apply the output layer at
masked positions only.

| name | modality | keys |
|---|---|---|
| transformer | text (or any token sequence) | model.num_layers, width, num_heads, mlp_ratio, mlp_hidden, cond_dim, positions, scan_layers |
| unet | image | model.unet.* |
| uvit | image | model.uvit.* |
"""

import functools

from md4_jax.models.layers import LAYER_AXIS  # noqa: F401 (the optimizer reads it)
from md4_jax.models.transformer import Transformer, TransformerConfig
from md4_jax.models.unet import UNet, UNetConfig
from md4_jax.models.uvit import UViT, UViTConfig

BACKBONES = ("transformer", "unet", "uvit")


def backbone_factory(config, modality, requirements: dict | None = None):
  """`make(rngs) -> module` for config.model.backbone over `modality`; ValueError for combinations
  that cannot work (an image backbone on text, a causal objective on a bidirectional image network).

  requirements: what the objective needs of the network ({"causal": True, "time_conditioning": False}
  for the autoregressive baseline).
  """
  model, requirements = config.model, dict(requirements or {})
  name = model.backbone
  if name not in BACKBONES:
    raise ValueError(f"model.backbone={name!r}: choose one of {BACKBONES}")
  time_conditioning = requirements.pop("time_conditioning", model.time_conditioning)
  causal = requirements.pop("causal", False)
  num_classes = modality.num_classes if model.class_conditional else 0
  if model.class_conditional and not num_classes:
    raise ValueError(f"model.class_conditional=True, but data.source={config.data.source!r} has no class labels; "
                     "set model.class_conditional=False or use a labelled image source")
  common = {"time_conditioning": time_conditioning, "dtype": model.dtype, "remat": model.remat,
            "attention": model.attention}
  if name == "transformer":
    if num_classes:
      raise ValueError("model.class_conditional=True needs an image backbone (model.backbone='unet' or 'uvit')")
    cfg = TransformerConfig(vocab_size=modality.vocab_size, seq_len=modality.length, num_layers=model.num_layers,
                            width=model.width, num_heads=model.num_heads, mlp_ratio=model.mlp_ratio,
                            mlp_hidden=model.mlp_hidden, cond_dim=model.cond_dim,
                            positions=model.positions, causal=causal,
                            scan_layers=model.scan_layers, **common)
    return functools.partial(Transformer, cfg)
  if modality.kind != "image":
    raise ValueError(f"model.backbone={name!r} models images, but data.source={config.data.source!r} is "
                     f"{modality.kind}; use model.backbone='transformer'")
  if causal:
    raise ValueError(f"objective={config.objective!r} needs a causal network; model.backbone={name!r} is not "
                     "(use model.backbone='transformer')")
  image = {"image_shape": modality.shape, "levels": modality.levels, "num_classes": num_classes, **common}
  if name == "unet":
    return functools.partial(UNet, UNetConfig(**image, **dict(model.unet)))
  return functools.partial(UViT, UViTConfig(**image, **dict(model.uvit)))


class Network:
  """A backbone with one call's labels and dropout key bound: `net(z_BxD, t_B) -> logits_BxDxV`, the
  form samplers and objectives take; `features` / `head_logits` where the backbone has them."""

  def __init__(self, module, label_B=None, dropout_key=None):
    self.module, self.label_B, self.dropout_key = module, label_B, dropout_key

  def __call__(self, z_BxD, t_B):
    return self.module(z_BxD, t_B, self.label_B, dropout_key=self.dropout_key)

  def features(self, z_BxD, t_B):
    return self.module.features(z_BxD, t_B, self.label_B, dropout_key=self.dropout_key)

  def head_logits(self, h_xF):
    return self.module.head_logits(h_xF)

  @property
  def splits_head(self) -> bool:
    """Whether the backbone has features / head_logits / head_loss (the transformer; image backbones do not)."""
    return self.module.splits_head

  def head_loss(self, h_NxF, x0_N, **loss):
    return self.module.head_loss(h_NxF, x0_N, **loss)
