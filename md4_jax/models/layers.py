"""Layers every backbone shares: parameters with logical axis names, dense layers, norms, time features.

Every parameter carries logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`, ...) that
sharding.py maps onto the mesh; parameters are created without a mesh and placed later.
"""

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

normal = nnx.initializers.normal
LAYER_AXIS = "layers"  # logical name of the leading axis of scanned (stacked) layers' parameters; never sharded


def param(rngs, init, shape, names):
  # eager_sharding=False: parameters are created without a mesh and placed later by sharding.py.
  return nnx.Param(init(rngs.params(), shape), out_sharding=names, eager_sharding=False)


class Dense(nnx.Module):
  """x @ kernel (+ bias) with fan-in scaled init; `names` label the kernel's axes.

  The float32 kernel is cast to x's dtype, so a bfloat16 activation gives a bfloat16
  matmul; `out_dtype` asks for a wider result (the logits are float32).
  """

  def __init__(self, in_shape, out_shape, names, rngs, zero_init=False, bias=False):
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    fan_in = math.prod(in_shape)
    init = nnx.initializers.zeros if zero_init else normal(1.0 / math.sqrt(fan_in))
    self.kernel = param(rngs, init, in_shape + out_shape, names)
    self.bias = param(rngs, nnx.initializers.zeros, out_shape, names[len(in_shape):]) if bias else None
    self.num_in = len(in_shape)

  def __call__(self, x, out_dtype=None):
    # One 2-D matmul [tokens, fan_in] @ [fan_in, fan_out]: XLA's CPU backend runs these (and their
    # gradients) far faster than contractions over several axes.
    kernel = self.kernel[...].astype(x.dtype)
    in_shape, out_shape = kernel.shape[: self.num_in], kernel.shape[self.num_in:]
    lead = x.shape[: x.ndim - self.num_in]
    y = jnp.matmul(x.reshape(-1, math.prod(in_shape)), kernel.reshape(math.prod(in_shape), -1),
                   preferred_element_type=out_dtype)
    y = y.reshape(*lead, *out_shape)
    return y if self.bias is None else y + self.bias[...].astype(y.dtype)


class RMSNorm(nnx.Module):
  """x / rms(x) * scale over the last axis; `names`: the scale's logical axis ("kv" for a per-head norm)."""

  def __init__(self, width, rngs, names=("embed",), eps: float = 1e-6):
    self.scale = param(rngs, nnx.initializers.ones, (width,), names)
    self.eps = eps

  def __call__(self, x):
    return rms_norm(x, self.scale[...], self.eps)


def _rms_norm_forward(x_xD, scale_D, eps):
  x32_xD = x_xD.astype(jnp.float32)
  inverse_rms_x1 = jax.lax.rsqrt(jnp.mean(x32_xD * x32_xD, axis=-1, keepdims=True) + eps)
  return (x32_xD * inverse_rms_x1 * scale_D).astype(x_xD.dtype), (x_xD, inverse_rms_x1, scale_D)


def _rms_norm_backward(eps, residuals, dy_xD):
  """Autodiff's gradient, from the input in its own dtype and the float32 1/rms per row: autodiff would keep
  two float32 copies of x [..., D] per norm (0.05 GiB each at 8 x 1024 x 768), twice per block."""
  del eps  # in inverse_rms_x1 already
  x_xD, inverse_rms_x1, scale_D = residuals
  normed_xD = x_xD.astype(jnp.float32) * inverse_rms_x1
  dy32_xD = dy_xD.astype(jnp.float32)
  dscale_D = jnp.sum(dy32_xD * normed_xD, axis=tuple(range(dy_xD.ndim - 1)))
  dnormed_xD = dy32_xD * scale_D
  dx_xD = inverse_rms_x1 * (dnormed_xD - normed_xD * jnp.mean(dnormed_xD * normed_xD, axis=-1, keepdims=True))
  return dx_xD.astype(x_xD.dtype), dscale_D


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x_xD, scale_D, eps: float = 1e-6):
  """x / sqrt(mean(x^2) + eps) * scale over the last axis, computed in float32, returned in x's dtype."""
  return _rms_norm_forward(x_xD, scale_D, eps)[0]


rms_norm.defvjp(_rms_norm_forward, _rms_norm_backward)


def _silu_glu_forward(gate, up):
  return jax.nn.silu(gate) * up, (gate, up)


def _silu_glu_backward(residuals, dy):
  """From the two inputs alone: autodiff keeps three more arrays of their size (SiLU's internals)."""
  gate, up = residuals
  sigmoid = jax.nn.sigmoid(gate)  # in the inputs' dtype, as autodiff of the forward computes it
  return dy * up * sigmoid * (1 + gate * (1 - sigmoid)), dy * gate * sigmoid  # d silu(g)/dg = s (1 + g (1 - s))


@jax.custom_vjp
def silu_glu(gate, up):
  """silu(gate) * up: the gated unit of a SwiGLU MLP."""
  return _silu_glu_forward(gate, up)[0]


silu_glu.defvjp(_silu_glu_forward, _silu_glu_backward)


def timestep_embedding(t_B, width, max_period=10_000.0):
  """Sinusoidal features of 1000 t, as in diffusion models."""
  half = width // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half) / half)
  args_BxH = 1000.0 * t_B[:, None].astype(jnp.float32) * freqs[None, :]
  return jnp.concatenate([jnp.cos(args_BxH), jnp.sin(args_BxH)], axis=-1)


def dropout(key, x, rate: float):
  """Inverted dropout; no key (evaluation, sampling) or rate 0 is the identity."""
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def rope(x_BxLxHxK, positions_L=None, theta: float = 10_000.0):
  """Rotary position embedding over the length axis (half-split convention, as Llama's and Qwen's weights
  expect); positions_L default 0..L-1, or [B, L]: each row's own (the sampling caches' rows in different
  blocks); theta: the frequencies' base."""
  length, head_dim = x_BxLxHxK.shape[1], x_BxLxHxK.shape[-1]
  positions_L = jnp.arange(length) if positions_L is None else positions_L
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2) / head_dim))
  angles_xLxK2 = positions_L[..., None] * inv_freq  # [L, K/2] or [B, L, K/2]
  sin, cos = (f(angles_xLxK2)[..., None, :].astype(x_BxLxHxK.dtype) for f in (jnp.sin, jnp.cos))  # over heads
  x1, x2 = jnp.split(x_BxLxHxK, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
