"""The U-Net denoiser for images (`model.backbone = "unet"`; MD4's CIFAR-10 network).

No down-sampling: `num_res_blocks` residual blocks at full resolution going down (their outputs
kept), a middle of residual block, single-head self-attention and residual block, then
`num_res_blocks + 1` blocks coming up, each taking the matching kept output concatenated to
its input. GroupNorm + swish throughout; the condition (time, class) is added in every block
through a zero-initialised dense layer. `model(z_BxL, t_B, label_B) -> logits_BxLxV`.
"""

import dataclasses
import functools

import jax
import ml_collections
from flax import nnx

from md4_jax.models import image_layers
from md4_jax.models.attention import attention_kernel, check_attention
from md4_jax.models.backbone import Backbone, classes, image_only, shared_keys


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """The settings of model.backbone='unet'; their defaults and meanings live in configs/base.py (model.unet.*)."""
  image_shape: tuple  # (H, W, C)
  levels: int  # V values per sub-pixel; the input vocabulary is V + 1 (mask id V)
  channels: int  # width of every block
  num_res_blocks: int  # blocks going down (and this plus one coming up)
  embed_dim: int  # per-sub-pixel embedding size; 0 = channels
  dropout: float
  time_conditioning: bool
  num_classes: int  # 0 = unconditional
  dtype: str
  remat: str
  attention: str  # the middle's attention kernel (attention.attention_kernel)

  def __post_init__(self):
    if self.channels <= 0 or self.num_res_blocks < 0:
      raise ValueError(f"model.unet: channels={self.channels} must be positive and num_res_blocks="
                       f"{self.num_res_blocks} at least 0")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.unet.dropout={self.dropout} must be in [0, 1)")
    check_attention(self.attention, self.dtype)

  def summary(self) -> str:
    height, width, channels = self.image_shape
    return (f"U-Net, {self.num_res_blocks} + 2 + {self.num_res_blocks + 1} residual blocks of {self.channels} "
            f"channels, attention in the middle; {height}x{width}x{channels} images, {self.levels} levels"
            + (f", {self.num_classes} classes" if self.num_classes else ""))


class AttentionMiddle(nnx.Module):
  """Residual block, single-head self-attention, residual block."""

  def __init__(self, block, width, rngs, kernel="xla"):
    self.first, self.second = block(width), block(width)
    self.attention = image_layers.SelfAttention(width, 1, rngs, kernel=kernel)

  def __call__(self, h, cond, dropout_key=None):
    keys = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
    return self.second(self.attention(self.first(h, cond, keys[0])), cond, keys[1])


class UNet(image_layers.ResidualTrunk):

  def __init__(self, cfg: UNetConfig, rngs: nnx.Rngs):
    super().__init__(cfg, rngs, cond_mode="add", conditioned_head=False,
                     make_middle=lambda block, cond_dim: AttentionMiddle(
                         block, cfg.channels, rngs, attention_kernel(cfg.attention, cfg.dtype, cfg.channels)))


def config_group() -> ml_collections.ConfigDict:
  """model.unet.*: gathered by configs/base.py."""
  group = ml_collections.ConfigDict()
  group.channels = 128  # width of every residual block
  group.num_res_blocks = 32  # blocks going down (num_res_blocks + 1 coming up), around attention
  group.embed_dim = 0  # per-sub-pixel embedding size before the input conv; 0 = channels
  group.dropout = 0.1  # dropout inside every residual block
  return group


def build(config, modality, requirements: dict) -> Backbone:
  """model.backbone = "unet": images."""
  image_only(config, modality, requirements)
  cfg = UNetConfig(image_shape=modality.shape, levels=modality.levels, num_classes=classes(config, modality),
                   **shared_keys(config, requirements), **dict(config.model.unet))
  return Backbone(cfg, functools.partial(UNet, cfg))
