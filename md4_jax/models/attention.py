"""Softmax attention for every backbone: the kernel choice (cuDNN's fused kernel or the XLA form) and the XLA
form's hand-written backward pass.

The XLA form keeps no [L, L] array for the backward pass: it saves the log-normaliser of each query row and
recomputes the probabilities (as FlashAttention does), and it runs over groups of heads (`lax.map`) so a step
holds the float32 [B, heads, L, L] scores of one group at a time (at B 8, L 1024, 12 heads: 0.4 GiB per array
for all heads at once, 64 MiB per group of two).

Which keys a query may see is a `Mask` (static: part of the compiled program): none (bidirectional), causal
(the autoregressive baseline), block-causal (block diffusion's sampler: a block sees itself and the blocks
before it) and block diffusion's training layout (noised and clean sequence side by side, docs/method.md).
"""

import functools
import math

import jax
import jax.numpy as jnp

from md4_jax.core.attention_masks import CAUSAL, Mask  # noqa: F401 (the masks attention takes)
from md4_jax.models.block_attention import block_diffusion_attention

SCORE_BLOCK_ELEMENTS = 1 << 24  # float32 scores of one head group on the CPU: 64 MiB
ACCELERATOR_SCORE_BLOCK_ELEMENTS = 1 << 27  # on a GPU/TPU: 512 MiB (fewer, larger steps keep it busy)


ATTENTION_KERNELS = ("auto", "xla", "cudnn", "splash")




def check_attention(name: str, dtype: str) -> None:
  """ValueError unless model.attention=`name` can run here with model.dtype=`dtype`."""
  if name not in ATTENTION_KERNELS:
    raise ValueError(f"model.attention={name!r}: choose one of {ATTENTION_KERNELS}")
  if name == "cudnn" and (jax.default_backend() != "gpu" or dtype == "float32"):
    raise ValueError(f"model.attention='cudnn' needs a GPU and model.dtype='bfloat16' (this run: backend "
                     f"{jax.default_backend()!r}, dtype {dtype!r}); use model.attention='auto'")
  if name == "splash" and jax.default_backend() != "tpu":
    raise ValueError(f"model.attention='splash' (Pallas's TPU kernel for block diffusion's mask) needs a TPU (this "
                     f"run: backend {jax.default_backend()!r}); use model.attention='auto'")


def attention_kernel(name: str, dtype: str, head_dim: int) -> str:
  """The kernel a layer runs: "cudnn" (jax.nn.dot_product_attention's fused cuDNN kernel), "splash" (on a TPU:
  block diffusion's training mask through Pallas splash attention, splash_attention.py; other masks XLA) or "xla"
  (`attention` below). "auto" takes cuDNN on a GPU in bfloat16 for head sizes it supports (multiples of 8 up to
  128), splash on a TPU, else XLA: the fused kernel does not materialise the [L, L] scores, and float32 has no
  cuDNN path."""
  check_attention(name, dtype)
  if name == "auto" and jax.default_backend() == "tpu":
    return "splash"
  if name == "auto":
    usable = jax.default_backend() == "gpu" and dtype != "float32" and head_dim % 8 == 0 and head_dim <= 128
    return "cudnn" if usable else "xla"
  return name


def attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, *, causal: bool = False, mask: Mask | None = None,
              kernel: str = "xla"):
  """Softmax attention; scores and softmax in float32, the weighted sum in the values' dtype.

  kernel "xla": the weighted sum is written heads-major ([B, H, L, K] operands): XLA:CPU compiles the
  equivalent einsum "bhqs,bshk->bqhk" (and jax.nn.dot_product_attention's XLA form, which uses it) into a dot
  that reads the softmax output transposed, 2-4x slower per layer for the same numbers. Its gradient is
  written out the same way (`_attention_backward`). kernel "cudnn": the fused GPU kernel (see
  attention_kernel), same function up to rounding; block masks run the XLA form (untested on cuDNN here).
  Block diffusion's training mask runs block_attention.py's chunked form, which skips what the mask drops (kernel
  "splash": Pallas splash attention, which skips the tiles the mask empties).
  causal=True is mask=CAUSAL. mask may also be a boolean [L, L] array (True: may attend), drawn per step
  (MD4's attention annealing, objectives/md4.py); it runs the XLA form.
  """
  mask = CAUSAL if causal else mask
  if mask is not None and not isinstance(mask, Mask):
    return _attention_allowed(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask)
  if mask is not None and mask.kind == "block_diffusion":
    if kernel == "splash":
      from md4_jax.models import splash_attention  # noqa: PLC0415 (Pallas: imported on a TPU only)
      if q_BxLxHxK.shape[1] % splash_attention.TILE == 0:  # whole tiles of the kernel (other lengths: chunked)
        return splash_attention.splash_block_diffusion_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask.block_size)
    return block_diffusion_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask.block_size)
  if kernel == "cudnn" and mask in (None, CAUSAL):
    return jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, is_causal=mask == CAUSAL,
                                        implementation="cudnn")
  return _attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask)


def head_groups(batch: int, heads: int, length: int) -> int:
  """Groups the heads are split into: the fewest (dividing `heads`) whose [B, heads / groups, L, L] scores fit
  the backend's score block; 1 for short sequences."""
  elements = SCORE_BLOCK_ELEMENTS if jax.default_backend() == "cpu" else ACCELERATOR_SCORE_BLOCK_ELEMENTS
  for groups in range(1, heads + 1):
    if heads % groups == 0 and batch * (heads // groups) * length * length <= elements:
      return groups
  return heads


def _by_head_group(fn, groups: int, *arrays_BxHx):
  """fn over head groups, one at a time (`lax.map`): arrays [B, H, ...] in, results [B, H, ...] out."""
  if groups == 1:
    return fn(*arrays_BxHx)

  def split(x):  # [B, H, ...] -> [G, B, H / G, ...]
    return jnp.moveaxis(x.reshape(x.shape[0], groups, x.shape[1] // groups, *x.shape[2:]), 1, 0)

  def join(x):  # [G, B, H / G, ...] -> [B, H, ...]
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])

  return jax.tree.map(join, jax.lax.map(lambda parts: fn(*parts), tuple(map(split, arrays_BxHx))))


def _scores(q_BxHxLxK, k_BxHxLxK, mask):
  """Scaled scores [B, H, L, L] in float32, -inf where the mask forbids (every row keeps its own key)."""
  scores_BxHxLxL = jnp.matmul(q_BxHxLxK, jnp.swapaxes(k_BxHxLxK, -1, -2), preferred_element_type=jnp.float32)
  scores_BxHxLxL = scores_BxHxLxL / math.sqrt(q_BxHxLxK.shape[-1])
  if mask is not None:
    allowed_LxL = mask.allowed(scores_BxHxLxL.shape[-1]) if isinstance(mask, Mask) else mask
    scores_BxHxLxL = jnp.where(allowed_LxL, scores_BxHxLxL, -jnp.inf)
  return scores_BxHxLxL


def _forward_group(q_BxHxLxK, k_BxHxLxK, v_BxHxLxK, mask):
  scores_BxHxLxL = _scores(q_BxHxLxK, k_BxHxLxK, mask)
  lse_BxHxL = jax.nn.logsumexp(scores_BxHxLxL, axis=-1)
  probs_BxHxLxL = jnp.exp(scores_BxHxLxL - lse_BxHxL[..., None])
  return jnp.matmul(probs_BxHxLxL.astype(v_BxHxLxK.dtype), v_BxHxLxK), lse_BxHxL


def _attention_forward(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask):
  q_BxHxLxK, k_BxHxLxK, v_BxHxLxK = (jnp.swapaxes(x, 1, 2) for x in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK))
  groups = head_groups(*q_BxHxLxK.shape[:3])
  out_BxHxLxK, lse_BxHxL = _by_head_group(functools.partial(_forward_group, mask=mask), groups,
                                          q_BxHxLxK, k_BxHxLxK, v_BxHxLxK)
  return jnp.swapaxes(out_BxHxLxK, 1, 2), (q_BxHxLxK, k_BxHxLxK, v_BxHxLxK, lse_BxHxL)


def _backward_group(q_BxHxLxK, k_BxHxLxK, v_BxHxLxK, lse_BxHxL, dout_BxHxLxK, mask):
  probs_BxHxLxL = jnp.exp(_scores(q_BxHxLxK, k_BxHxLxK, mask) - lse_BxHxL[..., None])
  dv_BxHxLxK = jnp.matmul(jnp.swapaxes(probs_BxHxLxL.astype(v_BxHxLxK.dtype), -1, -2), dout_BxHxLxK)
  dprobs_BxHxLxL = jnp.matmul(dout_BxHxLxK, jnp.swapaxes(v_BxHxLxK, -1, -2), preferred_element_type=jnp.float32)
  # Softmax's gradient, times the 1/sqrt(K) the scores were scaled by.
  dscores_BxHxLxL = (probs_BxHxLxL * (dprobs_BxHxLxL - jnp.sum(dprobs_BxHxLxL * probs_BxHxLxL, -1, keepdims=True))
                     / math.sqrt(q_BxHxLxK.shape[-1]))
  dq_BxHxLxK = jnp.matmul(dscores_BxHxLxL.astype(k_BxHxLxK.dtype), k_BxHxLxK, preferred_element_type=jnp.float32)
  dk_BxHxLxK = jnp.matmul(jnp.swapaxes(dscores_BxHxLxL, -1, -2).astype(q_BxHxLxK.dtype), q_BxHxLxK,
                          preferred_element_type=jnp.float32)
  return dq_BxHxLxK.astype(q_BxHxLxK.dtype), dk_BxHxLxK.astype(k_BxHxLxK.dtype), dv_BxHxLxK


def _attention_backward(mask, residuals, dout_BxLxHxK):
  """The gradient autodiff would give, with the probabilities recomputed from the saved log-normaliser and
  every product a plain batched matmul over heads-major operands (autodiff's own transposes of the forward
  einsums hit a slow XLA:CPU path; 15-20% of the attention core's forward + backward time at width 256, 4 heads,
  length 256). Masked scores have probability 0, so they get no gradient."""
  q_BxHxLxK = residuals[0]
  groups = head_groups(*q_BxHxLxK.shape[:3])
  grads = _by_head_group(functools.partial(_backward_group, mask=mask), groups, *residuals,
                         jnp.swapaxes(dout_BxLxHxK, 1, 2))
  return tuple(jnp.swapaxes(grad, 1, 2) for grad in grads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask):
  return _attention_forward(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask)[0]


_attention.defvjp(_attention_forward, _attention_backward)


@jax.custom_vjp
def _attention_allowed(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, allowed_LxL):
  """`_attention` with an array mask: a traced value, so an argument (no gradient) rather than a static one."""
  return _attention_forward(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, allowed_LxL)[0]


def _attention_allowed_forward(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, allowed_LxL):
  out, residuals = _attention_forward(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, allowed_LxL)
  return out, (residuals, allowed_LxL)


def _attention_allowed_backward(saved, dout_BxLxHxK):
  residuals, allowed_LxL = saved
  return (*_attention_backward(allowed_LxL, residuals, dout_BxLxHxK), None)


_attention_allowed.defvjp(_attention_allowed_forward, _attention_allowed_backward)


def cached_attention(q_BxCxHxK, k_BxCxHxK, v_BxCxHxK, cached_k_BxSxHxK, cached_v_BxSxHxK, visible_S):
  """A chunk of C queries over its own keys and the cached keys: the sampling caches' pass (block diffusion's
  exact one, MD4's approximate ones). visible_S [S]: the cached keys seen (the chunk's all are); or [S + C]: the
  cached then the chunk's keys seen (the parallel sampler's prefix cache, rows in different blocks); or per row
  and query, [B, C, S + C] (block diffusion's rows in different blocks). Scores and softmax in float32."""
  keys_BxTxHxK = jnp.concatenate([cached_k_BxSxHxK, k_BxCxHxK], axis=1)  # T = S + C
  values_BxTxHxK = jnp.concatenate([cached_v_BxSxHxK, v_BxCxHxK], axis=1)
  visible_T = visible_S
  if visible_S.shape[-1] == cached_k_BxSxHxK.shape[1]:
    visible_T = jnp.concatenate([visible_S, jnp.ones(q_BxCxHxK.shape[1], bool)])
  if visible_T.ndim == 3:  # [B, C, T] -> [B, 1, C, T] (over heads)
    visible_T = visible_T[:, None]
  scores_BxHxCxT = jnp.einsum("bqhk,bshk->bhqs", q_BxCxHxK, keys_BxTxHxK, preferred_element_type=jnp.float32)
  scores_BxHxCxT = jnp.where(visible_T, scores_BxHxCxT / math.sqrt(q_BxCxHxK.shape[-1]), -jnp.inf)
  probs_BxHxCxT = jax.nn.softmax(scores_BxHxCxT, axis=-1).astype(values_BxTxHxK.dtype)
  return jnp.einsum("bhqs,bshk->bqhk", probs_BxHxCxT, values_BxTxHxK)
