"""The U-ViT denoiser for images (`model.backbone = "uvit"`; MD4's ImageNet 64x64 network).

Residual blocks at full resolution with conditional GroupNorm (time and class set every norm's
scale and shift) around a DiT middle: 2x2 patches (64x64 -> 1,024 tokens) embedded to `width`,
a trainable position embedding initialised to 2-D sin-cos, `num_layers` adaLN-zero transformer
blocks (LayerNorm, multi-head attention with biased q/k/v, GELU MLP), an adaLN final layer back
to patches. Then `num_res_blocks + 1` blocks coming up over the kept outputs, as in the U-Net.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
from flax import nnx

from md4_jax.models import image_layers
from md4_jax.models.attention import attention, attention_kernel, check_attention
from md4_jax.models.backbone import Backbone, classes, image_only, shared_keys
from md4_jax.models.layers import Dense, dropout, param


@dataclasses.dataclass(frozen=True)
class UViTConfig:
  """The settings of model.backbone='uvit'; their defaults and meanings live in configs/base.py (model.uvit.*)."""
  image_shape: tuple  # (H, W, C)
  levels: int  # V values per sub-pixel; the input vocabulary is V + 1 (mask id V)
  channels: int  # width of the residual blocks (and of the condition vector)
  num_res_blocks: int  # blocks going down (and this plus one coming up)
  embed_dim: int  # per-sub-pixel embedding size; 0 = channels
  patch_size: int  # DiT patches
  width: int  # DiT width
  num_layers: int  # DiT blocks
  num_heads: int
  mlp_ratio: float
  dropout: float
  time_conditioning: bool
  num_classes: int
  dtype: str
  remat: str
  attention: str  # the DiT blocks' attention kernel (attention.attention_kernel)

  def __post_init__(self):
    for name in ("channels", "patch_size", "width", "num_layers", "num_heads"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.uvit.{name}={getattr(self, name)} must be positive")
    height, width, _ = self.image_shape
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(f"model.uvit.patch_size={self.patch_size} must divide the image size {height}x{width}")
    if self.width % self.num_heads:
      raise ValueError(f"model.uvit.width={self.width} must divide into model.uvit.num_heads={self.num_heads}")
    if (self.width // 2) % 2:
      raise ValueError(f"model.uvit.width={self.width} must be a multiple of 4 (2-D sin-cos positions)")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.uvit.dropout={self.dropout} must be in [0, 1)")
    check_attention(self.attention, self.dtype)

  def summary(self) -> str:
    height, width, channels = self.image_shape
    tokens = (height // self.patch_size) * (width // self.patch_size)
    return (f"U-ViT, {self.num_res_blocks} + {self.num_res_blocks + 1} residual blocks of {self.channels} channels "
            f"around {self.num_layers} DiT layers (width {self.width}, {self.num_heads} heads, {tokens} tokens); "
            f"{height}x{width}x{channels} images, {self.levels} levels"
            + (f", {self.num_classes} classes" if self.num_classes else ""))


def sincos_2d(grid_h: int, grid_w: int, width: int) -> np.ndarray:
  """[grid_h * grid_w, width]: half the features encode the row, half the column, each as
  sin / cos of the position at geometric frequencies 1 / 10000^(k / (width / 4))."""
  quarter = width // 4
  freqs = 1.0 / 10_000.0 ** (np.arange(quarter) / quarter)
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  def encode(position):
    angles = position.reshape(-1)[:, None] * freqs[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
  return np.concatenate([encode(rows), encode(cols)], axis=1).astype(np.float32)


def layer_norm(x):
  """LayerNorm without scale or shift (adaLN supplies them), in float32."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(jnp.var(x32, axis=-1, keepdims=True) + 1e-6)).astype(x.dtype)


class DiTBlock(nnx.Module):
  """adaLN-zero: shift, scale and gate of both halves from the condition (zero init: identity)."""

  def __init__(self, cfg: UViTConfig, cond_dim: int, rngs):
    head_dim = cfg.width // cfg.num_heads
    hidden = int(cfg.width * cfg.mlp_ratio)
    self.qkv = Dense((cfg.width,), (3, cfg.num_heads, head_dim), ("embed", None, "heads", "kv"), rngs, bias=True)
    self.out = Dense((cfg.num_heads, head_dim), (cfg.width,), ("heads", "kv", "embed"), rngs)
    self.fc1 = Dense((cfg.width,), (hidden,), ("embed", "mlp"), rngs, bias=True)
    self.fc2 = Dense((hidden,), (cfg.width,), ("mlp", "embed"), rngs, bias=True)
    self.modulation = (Dense((cond_dim,), (6, cfg.width), ("embed_out", None, "embed"), rngs, zero_init=True,
                             bias=True) if cond_dim else None)
    self.dropout_rate = cfg.dropout
    self.kernel = attention_kernel(cfg.attention, cfg.dtype, head_dim)

  def __call__(self, x_BxNxD, cond_BxE, dropout_key=None):
    if self.modulation is not None:
      mods = self.modulation(jax.nn.swish(cond_BxE))[:, None]  # [B, 1, 6, D]
      shift1, scale1, gate1, shift2, scale2, gate2 = (mods[:, :, i] for i in range(6))
    else:
      shift1 = scale1 = shift2 = scale2 = 0.0
      gate1 = gate2 = 1.0
    keys = jax.random.split(dropout_key, 3) if dropout_key is not None else (None,) * 3
    q, k, v = jnp.moveaxis(self.qkv(layer_norm(x_BxNxD) * (1 + scale1) + shift1), 2, 0)
    attended = dropout(keys[0], self.out(attention(q, k, v, kernel=self.kernel)), self.dropout_rate)
    x_BxNxD = x_BxNxD + gate1 * attended
    h = dropout(keys[1], jax.nn.gelu(self.fc1(layer_norm(x_BxNxD) * (1 + scale2) + shift2)), self.dropout_rate)
    return x_BxNxD + gate2 * dropout(keys[2], self.fc2(h), self.dropout_rate)


class DiT(nnx.Module):
  """[B, H, W, C] -> patches -> transformer -> [B, H, W, C]."""

  def __init__(self, cfg: UViTConfig, cond_dim: int, rngs):
    height, width, _ = cfg.image_shape
    patch = cfg.patch_size
    self.grid = (height // patch, width // patch)
    self.patch, self.channels = patch, cfg.channels
    self.embed = image_layers.Conv(cfg.channels, cfg.width, rngs, kernel=patch, stride=patch)
    self.positions = param(rngs, lambda key, shape: jnp.asarray(sincos_2d(*self.grid, cfg.width)),
                           (self.grid[0] * self.grid[1], cfg.width), (None, "embed"))
    self.blocks = nnx.List([DiTBlock(cfg, cond_dim, rngs) for _ in range(cfg.num_layers)])
    self.final_modulation = (Dense((cond_dim,), (2, cfg.width), ("embed_out", None, "embed"), rngs, zero_init=True,
                                   bias=True) if cond_dim else None)
    self.final = Dense((cfg.width,), (patch * patch * cfg.channels,), ("embed", "mlp"), rngs, zero_init=True, bias=True)
    self.remat = cfg.remat

  def __call__(self, x_BxHxWxC, cond_BxE, dropout_key=None):
    batch = x_BxHxWxC.shape[0]
    h = self.embed(x_BxHxWxC)
    h = h.reshape(batch, -1, h.shape[-1]) + self.positions[...].astype(h.dtype)
    apply = lambda block, h, cond, key: block(h, cond, key)  # noqa: E731
    if self.remat == "block":
      apply = nnx.remat(apply)
    keys = jax.random.split(dropout_key, len(self.blocks)) if dropout_key is not None else [None] * len(self.blocks)
    for block, key in zip(self.blocks, keys):
      h = apply(block, h, cond_BxE, key)
    h = layer_norm(h)
    if self.final_modulation is not None:
      shift, scale = jnp.moveaxis(self.final_modulation(jax.nn.swish(cond_BxE)), 1, 0)[:, :, None]
      h = h * (1 + scale) + shift
    h = self.final(h)  # [B, N, p * p * C]
    (grid_h, grid_w), patch = self.grid, self.patch
    h = h.reshape(batch, grid_h, grid_w, patch, patch, self.channels).transpose(0, 1, 3, 2, 4, 5)
    return h.reshape(batch, grid_h * patch, grid_w * patch, self.channels)


class UViT(image_layers.ResidualTrunk):

  def __init__(self, cfg: UViTConfig, rngs: nnx.Rngs):
    super().__init__(cfg, rngs, cond_mode="norm", conditioned_head=True,
                     make_middle=lambda block, cond_dim: DiT(cfg, cond_dim, rngs))


def config_group() -> ml_collections.ConfigDict:
  """model.uvit.*: gathered by configs/base.py."""
  group = ml_collections.ConfigDict()
  group.channels = 256  # width of the residual blocks and of the condition
  group.num_res_blocks = 8  # blocks going down (num_res_blocks + 1 coming up)
  group.embed_dim = 0  # per-sub-pixel embedding size before the input conv; 0 = channels
  group.patch_size = 2  # DiT patch size (64x64 -> 1,024 tokens)
  group.width = 768  # DiT width
  group.num_layers = 20  # DiT blocks (adaLN-zero)
  group.num_heads = 12  # DiT attention heads
  group.mlp_ratio = 4.0  # DiT GELU MLP hidden size = mlp_ratio * width
  group.dropout = 0.1  # dropout in the residual blocks and the DiT
  return group


def build(config, modality, requirements: dict) -> Backbone:
  """model.backbone = "uvit": images."""
  image_only(config, modality, requirements)
  cfg = UViTConfig(image_shape=modality.shape, levels=modality.levels, num_classes=classes(config, modality),
                   **shared_keys(config, requirements), **dict(config.model.uvit))
  return Backbone(cfg, functools.partial(UViT, cfg))
