"""Layers of the image backbones (U-Net, U-ViT): convolutions, group norms, pixel embedding and head.

Images arrive flat, as the diffusion sees them: z_BxL with D = H * W * C sub-pixel tokens,
channel-interleaved per pixel (index (h W + w) C + c), each in [0, V] (V = the mask id).
Activations are NHWC; convolution kernels HWIO with logical names on their channel axes.
"""

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from md4_jax.models.attention import attention
from md4_jax.models.layers import Dense, dropout, normal, param, timestep_embedding


class Conv(nnx.Module):
  """A 2-D convolution, NHWC; 'SAME' padding (stride 1) or non-overlapping patches (stride = kernel)."""

  def __init__(self, in_channels, out_channels, rngs, kernel=3, stride=1, zero_init=False,
               names=("embed", "mlp")):
    fan_in = kernel * kernel * in_channels
    init = nnx.initializers.zeros if zero_init else normal(1.0 / math.sqrt(fan_in))
    self.kernel = param(rngs, init, (kernel, kernel, in_channels, out_channels), (None, None) + names)
    self.bias = param(rngs, nnx.initializers.zeros, (out_channels,), names[1:])
    self.stride = stride

  def __call__(self, x_BxHxWxC):
    kernel = self.kernel[...].astype(x_BxHxWxC.dtype)
    # On the CPU the gradient is written out (conv2d); elsewhere autodiff's, which XLA:GPU maps onto cuDNN's
    # backward-data and backward-filter kernels.
    y = (conv2d(x_BxHxWxC, kernel, self.stride) if jax.default_backend() == "cpu"
         else conv2d_autodiff(x_BxHxWxC, kernel, self.stride))
    return y + self.bias[...].astype(y.dtype)


_NHWC = ("NHWC", "HWIO", "NHWC")


def _same_padding(size):
  """'SAME' padding of a stride-1 window of `size` (XLA's: the odd one out goes after)."""
  return (size - 1) // 2, size - 1 - (size - 1) // 2


def _conv_forward(x_BxHxWxC, kernel_KxKxCxO, stride):
  padding = [_same_padding(size) for size in kernel_KxKxCxO.shape[:2]] if stride == 1 else "VALID"
  y = jax.lax.conv_general_dilated(x_BxHxWxC, kernel_KxKxCxO, (stride, stride), padding, dimension_numbers=_NHWC)
  return y, (x_BxHxWxC, kernel_KxKxCxO)


def conv2d_autodiff(x_BxHxWxC, kernel_KxKxCxO, stride):
  """conv2d's forward, differentiated by autodiff (what other backends run)."""
  return _conv_forward(x_BxHxWxC, kernel_KxKxCxO, stride)[0]


def _conv_backward(stride, residuals, dy_BxHxWxO):
  """Autodiff's gradient, with each product a convolution in XLA:CPU's canonical (NHWC, HWIO) form. Autodiff's
  own kernel gradient (channels as the batch, "f01b_i01o->01bf") is rewritten to that form by XLA:CPU only
  outside loops: inside a lax.scan or fori_loop (train.steps_per_call, train.grad_accum) it runs 20-60x slower,
  the input gradient 2.5x (benchmarks/RESULTS.md, 2026-12-03). Same sums in the same order (bitwise equal on
  the CPUs seen; tests/models/test_image_layers.py allows float rounding)."""
  x_BxHxWxC, kernel_KxKxCxO = residuals
  kh, kw, _, _ = kernel_KxKxCxO.shape
  if stride == 1:  # dx: dy correlated with the kernel flipped in space, its in/out channels swapped
    flipped_KxKxOxC = jnp.flip(kernel_KxKxCxO, (0, 1)).swapaxes(2, 3)
    padding = [_same_padding(size)[::-1] for size in (kh, kw)]
    dx = jax.lax.conv_general_dilated(dy_BxHxWxO, flipped_KxKxOxC, (1, 1), padding, dimension_numbers=_NHWC)
    window_padding, dilation = [_same_padding(size) for size in (kh, kw)], (1, 1)
  else:  # patches: each output position is one matmul of its own patch
    dx = jnp.einsum("bhwo,pqco->bhpwqc", dy_BxHxWxO, kernel_KxKxCxO).reshape(x_BxHxWxC.shape)
    window_padding, dilation = [(0, 0), (0, 0)], (stride, stride)
  # dkernel[p, q, c, o] = sum over b, h, w of x[b, h s + p, w s + q, c] dy[b, h, w, o]: a convolution of x with
  # channels as its batch (C x H x W x B) by dy as the window (H' x W' x B x O, dilated by the stride).
  dkernel_CxKxKxO = jax.lax.conv_general_dilated(
      x_BxHxWxC.transpose(3, 1, 2, 0), dy_BxHxWxO.transpose(1, 2, 0, 3), (1, 1), window_padding,
      rhs_dilation=dilation, dimension_numbers=_NHWC)
  return dx, dkernel_CxKxKxO.transpose(1, 2, 0, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x_BxHxWxC, kernel_KxKxCxO, stride):
  """'SAME' (stride 1) or patch (stride = kernel size) convolution with the hand-written gradient above."""
  return conv2d_autodiff(x_BxHxWxC, kernel_KxKxCxO, stride)


conv2d.defvjp(_conv_forward, _conv_backward)


def num_groups(channels: int, groups: int = 32) -> int:
  """GroupNorm's group count: 32 where the channels allow it (tiny test models have fewer)."""
  return math.gcd(channels, groups)


class GroupNorm(nnx.Module):
  """GroupNorm over NHWC, in float32. With `cond_dim`, its scale and shift come from the condition
  (a zero-initialised dense layer: identity at init) instead of learned constants."""

  def __init__(self, channels, rngs, cond_dim: int = 0):
    self.groups = num_groups(channels)
    if cond_dim:
      self.scale = self.shift = None
      self.modulation = Dense((cond_dim,), (2, channels), ("embed_out", None, "embed"), rngs, zero_init=True,
                              bias=True)
    else:
      self.scale = param(rngs, nnx.initializers.ones, (channels,), ("embed",))
      self.shift = param(rngs, nnx.initializers.zeros, (channels,), ("embed",))
      self.modulation = None

  def __call__(self, x_BxHxWxC, cond_BxE=None):
    batch, height, width, channels = x_BxHxWxC.shape
    x = x_BxHxWxC.astype(jnp.float32).reshape(batch, height * width, self.groups, channels // self.groups)
    mean = jnp.mean(x, axis=(1, 3), keepdims=True)
    variance = jnp.mean(jnp.square(x - mean), axis=(1, 3), keepdims=True)
    x = ((x - mean) * jax.lax.rsqrt(variance + 1e-6)).reshape(batch, height, width, channels)
    if self.modulation is None:
      x = x * self.scale[...] + self.shift[...]
    else:
      scale, shift = jnp.moveaxis(self.modulation(cond_BxE.astype(jnp.float32)), 1, 0)[:, :, None, None]
      x = x * (1 + scale) + shift
    return x.astype(x_BxHxWxC.dtype)


class ResBlock(nnx.Module):
  """norm -> swish -> conv -> (+ condition) -> norm -> swish -> dropout -> zero-init conv, plus the input
  (through a 1x1 projection when the channel count changes): identity at init.

  cond_mode "add" (the U-Net): the condition enters through a zero-initialised dense layer added
  after the first conv. "norm" (the U-ViT): both norms are conditional GroupNorms.
  """

  def __init__(self, in_channels, out_channels, rngs, *, cond_dim: int, cond_mode: str, dropout_rate: float):
    norm_cond = cond_dim if cond_mode == "norm" else 0
    self.norm1 = GroupNorm(in_channels, rngs, norm_cond)
    self.conv1 = Conv(in_channels, out_channels, rngs)
    self.cond = (Dense((cond_dim,), (out_channels,), ("embed_out", "mlp"), rngs, zero_init=True)
                 if cond_dim and cond_mode == "add" else None)
    self.norm2 = GroupNorm(out_channels, rngs, norm_cond)
    self.conv2 = Conv(out_channels, out_channels, rngs, zero_init=True, names=("mlp", "embed"))
    self.skip = (Dense((in_channels,), (out_channels,), ("embed", "mlp"), rngs, bias=True)
                 if in_channels != out_channels else None)
    self.dropout_rate = dropout_rate

  def __call__(self, x_BxHxWxC, cond_BxE, dropout_key=None):
    h = self.conv1(jax.nn.swish(self.norm1(x_BxHxWxC, cond_BxE)))
    if self.cond is not None and cond_BxE is not None:
      h = h + self.cond(cond_BxE.astype(h.dtype))[:, None, None, :]
    h = dropout(dropout_key, jax.nn.swish(self.norm2(h, cond_BxE)), self.dropout_rate)
    h = self.conv2(h)
    return (x_BxHxWxC if self.skip is None else self.skip(x_BxHxWxC)) + h


class SelfAttention(nnx.Module):
  """Residual self-attention over the H * W positions (multi-head, biased projections)."""

  def __init__(self, channels, num_heads, rngs, *, cond_dim: int = 0, zero_init_out: bool = False, kernel="xla"):
    head_dim = channels // num_heads
    self.kernel = kernel  # attention.attention_kernel
    self.norm = GroupNorm(channels, rngs, cond_dim)
    self.qkv = Dense((channels,), (3, num_heads, head_dim), ("embed", None, "heads", "kv"), rngs, bias=True)
    self.out = Dense((num_heads, head_dim), (channels,), ("heads", "kv", "embed"), rngs, zero_init=zero_init_out,
                     bias=True)

  def __call__(self, x_BxHxWxC, cond_BxE=None):
    batch, height, width, channels = x_BxHxWxC.shape
    h = self.norm(x_BxHxWxC, cond_BxE).reshape(batch, height * width, channels)
    q, k, v = jnp.moveaxis(self.qkv(h), 2, 0)  # [B, HW, heads, head_dim] each
    return x_BxHxWxC + self.out(attention(q, k, v, kernel=self.kernel)).reshape(x_BxHxWxC.shape)


class PixelEmbedding(nnx.Module):
  """Each sub-pixel token (V levels + mask) embedded; a pixel's C embeddings concatenated; a 3x3 conv to the width."""

  def __init__(self, image_shape, levels, embed_dim, width, rngs):
    self.image_shape = tuple(image_shape)  # (H, W, C)
    self.table = param(rngs, normal(1.0), (levels + 1, embed_dim), ("vocab", "embed"))
    self.conv = Conv(self.image_shape[2] * embed_dim, width, rngs)

  def __call__(self, z_BxL, dtype):
    height, width, channels = self.image_shape
    x = self.table[...][z_BxL].astype(dtype)  # [B, D, E]
    return self.conv(x.reshape(z_BxL.shape[0], height, width, -1))  # [B, H, W, C * E] -> [B, H, W, width]


class PixelHead(nnx.Module):
  """norm -> swish -> zero-initialised 3x3 conv to C * V, read as per-sub-pixel float32 logits [B, D, V]
  (zero init: an untrained model predicts uniformly, so its bound starts at log V per dimension)."""

  def __init__(self, width, image_shape, levels, rngs, cond_dim: int = 0):
    self.norm = GroupNorm(width, rngs, cond_dim)
    self.conv = Conv(width, image_shape[2] * levels, rngs, zero_init=True, names=("embed", "vocab"))
    self.levels = levels

  def __call__(self, h_BxHxWxF, cond_BxE=None):
    logits = self.conv(jax.nn.swish(self.norm(h_BxHxWxF, cond_BxE if self.norm.modulation else None)))
    logits = logits.astype(jnp.float32)
    return logits.reshape(h_BxHxWxF.shape[0], -1, self.levels)


class Condition(nnx.Module):
  """The conditioning vector: sinusoidal features of 1000 t through an MLP (width -> 4 width -> width),
  plus a learned label embedding when the model is class-conditional (row num_classes = the null
  class, used for label dropout and classifier-free guidance). None when there is nothing to condition on."""

  def __init__(self, width, rngs, *, time_conditioning: bool, num_classes: int):
    self.width = width
    self.time_in = Dense((width,), (4 * width,), ("embed", "mlp"), rngs, bias=True) if time_conditioning else None
    self.time_out = Dense((4 * width,), (width,), ("mlp", "embed"), rngs, bias=True) if time_conditioning else None
    self.labels = param(rngs, normal(1.0), (num_classes + 1, width), (None, "embed")) if num_classes else None

  def __call__(self, t_B, label_B, dtype):
    cond = None
    if self.time_in is not None:
      cond = self.time_out(jax.nn.swish(self.time_in(timestep_embedding(t_B, self.width).astype(dtype))))
    if self.labels is not None:
      label_emb = self.labels[...][label_B].astype(dtype)
      cond = label_emb if cond is None else cond + label_emb
    return cond


class ResidualTrunk(nnx.Module):
  """What the U-Net and U-ViT share: pixel embedding -> `cfg.num_res_blocks` residual blocks going down
  (outputs kept) -> a middle -> `num_res_blocks + 1` blocks coming up, each over its input concatenated
  with the matching kept output -> pixel head, all of width `cfg.channels`.

  cond_mode: how blocks take the condition ("add" or "norm", see ResBlock); make_middle(block, cond_dim)
  builds the middle, called as middle(h, cond, dropout_key); conditioned_head: the head's GroupNorm is
  conditional too.
  """

  splits_head = False  # one pixel head: no features / head_loss split (models/__init__.py)

  def __init__(self, cfg, rngs, *, cond_mode: str, make_middle, conditioned_head: bool):
    self.cfg = cfg
    width = cfg.channels
    self.embed = PixelEmbedding(cfg.image_shape, cfg.levels, cfg.embed_dim or width, width, rngs)
    self.condition = Condition(width, rngs, time_conditioning=cfg.time_conditioning, num_classes=cfg.num_classes)
    cond_dim = width if (cfg.time_conditioning or cfg.num_classes) else 0
    block = lambda in_channels: ResBlock(  # noqa: E731
        in_channels, width, rngs, cond_dim=cond_dim, cond_mode=cond_mode, dropout_rate=cfg.dropout)
    self.down = nnx.List([block(width) for _ in range(cfg.num_res_blocks)])
    self.middle = make_middle(block, cond_dim)
    self.up = nnx.List([block(2 * width) for _ in range(cfg.num_res_blocks + 1)])
    self.head = PixelHead(width, cfg.image_shape, cfg.levels, rngs, cond_dim=cond_dim if conditioned_head else 0)

  def __call__(self, z_BxL, t_B, label_B=None, *, dropout_key=None):
    cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    if label_B is None and cfg.num_classes:
      label_B = jnp.full(z_BxL.shape[:1], cfg.num_classes, jnp.int32)  # the null class: unconditional
    cond = self.condition(t_B, label_B, dtype)
    count = len(self.down) + len(self.up) + 1
    keys = list(jax.random.split(dropout_key, count)) if dropout_key is not None else [None] * count
    apply = lambda block, x, cond, key: block(x, cond, key)  # noqa: E731
    if cfg.remat == "block":  # keep only each block's input; recompute its insides for the gradient
      apply = nnx.remat(apply)
    h = self.embed(z_BxL, dtype)
    kept = [h]
    for block in self.down:
      h = apply(block, h, cond, keys.pop())
      kept.append(h)
    h = self.middle(h, cond, keys.pop())
    for block in self.up:
      h = apply(block, jnp.concatenate([h, kept.pop()], axis=-1), cond, keys.pop())
    return self.head(h, cond)
