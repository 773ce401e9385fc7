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

  def __init__(self, width, rngs):
    self.scale = param(rngs, nnx.initializers.ones, (width,), ("embed",))

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6)
    return (normed * self.scale[...]).astype(x.dtype)


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


ATTENTION_KERNELS = ("auto", "xla", "cudnn")


def check_attention(name: str, dtype: str) -> None:
  """ValueError unless model.attention=`name` can run here with model.dtype=`dtype`."""
  if name not in ATTENTION_KERNELS:
    raise ValueError(f"model.attention={name!r}: choose one of {ATTENTION_KERNELS}")
  if name == "cudnn" and (jax.default_backend() != "gpu" or dtype == "float32"):
    raise ValueError(f"model.attention='cudnn' needs a GPU and model.dtype='bfloat16' (this run: backend "
                     f"{jax.default_backend()!r}, dtype {dtype!r}); use model.attention='auto'")


def attention_kernel(name: str, dtype: str, head_dim: int) -> str:
  """The kernel a layer runs: "cudnn" (jax.nn.dot_product_attention's fused cuDNN kernel) or "xla" (`attention`
  below). "auto" takes cuDNN on a GPU in bfloat16 for head sizes it supports (multiples of 8 up to 128), else
  XLA: the fused kernel does not materialise the [L, L] scores, and float32 has no cuDNN path."""
  check_attention(name, dtype)
  if name == "auto":
    usable = jax.default_backend() == "gpu" and dtype != "float32" and head_dim % 8 == 0 and head_dim <= 128
    return "cudnn" if usable else "xla"
  return name


def attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, *, causal: bool = False, kernel: str = "xla"):
  """Softmax attention; scores and softmax in float32, the weighted sum in the values' dtype.

  kernel "xla": the weighted sum is written heads-major ([B, H, L, K] operands): XLA:CPU compiles the
  equivalent einsum "bhqs,bshk->bqhk" (and jax.nn.dot_product_attention's XLA form, which uses it) into a dot
  that reads the softmax output transposed, 2-4x slower per layer for the same numbers. Its gradient is
  written out the same way (`_attention_backward`). kernel "cudnn": the fused GPU kernel (see
  attention_kernel), same function up to rounding.
  """
  if kernel == "cudnn":
    return jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, is_causal=causal, implementation="cudnn")
  return _attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, causal)


def _attention_forward(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, causal):
  scores_BxHxLxL = jnp.einsum("bqhk,bshk->bhqs", q_BxLxHxK, k_BxLxHxK, preferred_element_type=jnp.float32)
  if causal:
    length = scores_BxHxLxL.shape[-1]
    scores_BxHxLxL = jnp.where(jnp.tril(jnp.ones((length, length), bool)), scores_BxHxLxL, -jnp.inf)
  probs_BxHxLxL = jax.nn.softmax(scores_BxHxLxL / math.sqrt(q_BxLxHxK.shape[-1]), axis=-1)
  v_BxHxLxK = jnp.swapaxes(v_BxLxHxK, 1, 2)
  out_BxHxLxK = jnp.matmul(probs_BxHxLxL.astype(v_BxLxHxK.dtype), v_BxHxLxK)
  heads_major = (jnp.swapaxes(q_BxLxHxK, 1, 2), jnp.swapaxes(k_BxLxHxK, 1, 2), v_BxHxLxK)
  return jnp.swapaxes(out_BxHxLxK, 1, 2), (*heads_major, probs_BxHxLxL)


def _attention_backward(causal, residuals, dout_BxLxHxK):
  """The gradient autodiff would give, with every product a plain batched matmul over heads-major operands
  (autodiff's own transposes of the forward einsums hit the slow XLA:CPU path again; 15-20% of the attention
  core's forward + backward time at width 256, 4 heads, length 256). Masked scores have probability 0, so
  they get no gradient: `causal` needs no term of its own."""
  del causal
  q_BxHxLxK, k_BxHxLxK, v_BxHxLxK, probs_BxHxLxL = residuals
  dout_BxHxLxK = jnp.swapaxes(dout_BxLxHxK, 1, 2)
  dv_BxHxLxK = jnp.matmul(jnp.swapaxes(probs_BxHxLxL.astype(v_BxHxLxK.dtype), -1, -2), dout_BxHxLxK)
  dprobs_BxHxLxL = jnp.matmul(dout_BxHxLxK, jnp.swapaxes(v_BxHxLxK, -1, -2), preferred_element_type=jnp.float32)
  # Softmax's gradient, times the 1/sqrt(K) the scores were scaled by.
  dscores_BxHxLxL = (probs_BxHxLxL * (dprobs_BxHxLxL - jnp.sum(dprobs_BxHxLxL * probs_BxHxLxL, -1, keepdims=True))
                     / math.sqrt(q_BxHxLxK.shape[-1]))
  dq_BxHxLxK = jnp.matmul(dscores_BxHxLxL.astype(k_BxHxLxK.dtype), k_BxHxLxK, preferred_element_type=jnp.float32)
  dk_BxHxLxK = jnp.matmul(jnp.swapaxes(dscores_BxHxLxL, -1, -2).astype(q_BxHxLxK.dtype), q_BxHxLxK,
                          preferred_element_type=jnp.float32)
  return tuple(jnp.swapaxes(grad.astype(like.dtype), 1, 2) for grad, like in
               ((dq_BxHxLxK, q_BxHxLxK), (dk_BxHxLxK, k_BxHxLxK), (dv_BxHxLxK, v_BxHxLxK)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, causal):
  return _attention_forward(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, causal)[0]


_attention.defvjp(_attention_forward, _attention_backward)
