"""Block diffusion's training attention on a TPU: Pallas splash attention with the block-diffusion mask.

Splash attention (jax.experimental.pallas.ops.tpu) is a flash-attention kernel that takes a static mask, works
out which [tile, tile] tiles of it are empty, and skips them in the forward and backward passes: with blocks of
L' = 4 about a third of the [2L, 2L] tiles hold a key any query may see. model.attention = "splash" (or "auto" on
a TPU) runs block diffusion's layout through it; every other mask runs the XLA form. The kernel is Pallas's for
TPUs; Pallas's interpret mode runs it anywhere, which is how the tests check it on the CPU
(tests/models/test_splash_attention.py: values and gradients equal the dense masked form).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from md4_jax.core.attention_masks import Mask

TILE = 128  # query and key tile of the kernel (a TPU's lane width): 2L must be a multiple


@functools.lru_cache(maxsize=None)
def _kernel(length: int, block_size: int, heads: int, interpret: bool):
  """The splash kernel for a [heads, length, K] example under block diffusion's mask (built once per shape)."""
  if length % TILE:
    raise ValueError(f"splash attention needs 2 x data.seq_len ({length}) to be a multiple of {TILE}; use "
                     "model.attention='xla'")
  tile = TILE
  with jax.ensure_compile_time_eval():  # a constant of the program, even when first asked for inside a trace
    allowed = np.asarray(Mask("block_diffusion", block_size).allowed(length))
    sizes = splash.BlockSizes(block_q=tile, block_kv=tile, block_kv_compute=tile, block_q_dkv=tile,
                              block_kv_dkv=tile, block_kv_dkv_compute=tile, block_q_dq=tile, block_kv_dq=tile)
    mask = splash_mask.MultiHeadMask([splash_mask.NumpyMask(allowed)] * heads)
    return splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret)


def splash_block_diffusion_attention(q_Bx2LxHxK, k_Bx2LxHxK, v_Bx2LxHxK, block_size: int, *,
                                     interpret: bool = False):
  """Block diffusion's attention (the layout of core/attention_masks.py) through splash attention; interpret:
  Pallas's interpreter (any backend, slow) instead of the TPU kernel."""
  length, heads, head_dim = q_Bx2LxHxK.shape[1:]
  kernel = _kernel(length, block_size, heads, interpret)
  heads_major = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [B, H, 2L, K], as the kernel takes them
  scaled_q = q_Bx2LxHxK * jnp.asarray(head_dim**-0.5, q_Bx2LxHxK.dtype)  # the kernel does not scale the scores
  out_BxHx2LxK = jax.vmap(kernel)(heads_major(scaled_q), heads_major(k_Bx2LxHxK), heads_major(v_Bx2LxHxK))
  return heads_major(out_BxHx2LxK)
