"""Block diffusion's training attention computed only where its mask keeps keys (no dense [2L, 2L] scores).

The layout (core/attention_masks.py, "block_diffusion") is the noised sequence z (positions 0..L-1) beside the
clean one x (L..2L-1), in blocks of `block_size`: x's block b sees x's blocks up to b; z's block b sees x's blocks
before b and z's own block b. So every query of block b sees a prefix of x (blocks < b or <= b) and a z query
also its own block of z. The queries are taken in chunks of whole blocks, left to right: chunk c's z and x
queries attend to x's prefix up to the chunk's end (scores [2 Lc, (c + 1) Lc], masked inside the chunk only), and
each z query to its own block of z (block-diagonal scores [L / size, size, size]), one softmax over both.
Attention work: L^2 (1 + 1 / chunks) + L x size scores against the dense form's 4 L^2. Same values and gradients
as the dense form (tests/models/test_block_attention.py); the gradient is autodiff's.
"""

import math

import jax
import jax.numpy as jnp

MOST_CHUNKS = 8  # more chunks skip more of the masked half, at one compiled matmul shape per chunk


def chunk_count(num_blocks: int) -> int:
  """The most chunks, at most MOST_CHUNKS, that split num_blocks blocks evenly."""
  return max(c for c in range(1, min(num_blocks, MOST_CHUNKS) + 1) if num_blocks % c == 0)


def _heads_major(x_BxLxHxK):
  return jnp.swapaxes(x_BxLxHxK, 1, 2)


def block_diffusion_attention(q_Bx2LxHxK, k_Bx2LxHxK, v_Bx2LxHxK, block_size: int):
  """Softmax attention under the block-diffusion mask of 2L positions; scores and softmax in float32, the
  weighted sums in the values' dtype. [B, 2L, H, K] in and out."""
  batch, length2, heads, head_dim = q_Bx2LxHxK.shape
  length, size = length2 // 2, block_size
  num_blocks = length // size
  chunks = chunk_count(num_blocks)
  chunk = length // chunks
  scale = 1.0 / math.sqrt(head_dim)
  q_z, q_x = _heads_major(q_Bx2LxHxK[:, :length]), _heads_major(q_Bx2LxHxK[:, length:])  # [B, H, L, K]
  k_z, k_x = _heads_major(k_Bx2LxHxK[:, :length]), _heads_major(k_Bx2LxHxK[:, length:])
  v_z, v_x = _heads_major(v_Bx2LxHxK[:, :length]), _heads_major(v_Bx2LxHxK[:, length:])
  by_block = lambda x: x.reshape(batch, heads, num_blocks, size, head_dim)  # noqa: E731
  # Each z query against its own block of z: [B, H, blocks, size, size] -> [B, H, L, size].
  own_BxHxLxS = jnp.matmul(by_block(q_z), jnp.swapaxes(by_block(k_z), -1, -2),
                           preferred_element_type=jnp.float32).reshape(batch, heads, length, size) * scale
  block_L = jnp.arange(length) // size
  out_z, out_x = [], []
  for index in range(chunks):
    start, end = index * chunk, (index + 1) * chunk
    queries = jnp.concatenate([q_z[:, :, start:end], q_x[:, :, start:end]], axis=2)  # [B, H, 2 Lc, K]
    prefix = jnp.matmul(queries, jnp.swapaxes(k_x[:, :, :end], -1, -2),
                        preferred_element_type=jnp.float32) * scale  # [B, H, 2 Lc, end]
    query_block, key_block = block_L[start:end, None], block_L[None, :end]
    allowed = jnp.concatenate([key_block < query_block, key_block <= query_block], axis=0)  # z rows, then x rows
    prefix = jnp.where(allowed, prefix, -jnp.inf)
    # z rows: one softmax over the x prefix and the own block (the latter is never empty, so rows stay finite).
    probs_z = jax.nn.softmax(jnp.concatenate([prefix[:, :, :chunk], own_BxHxLxS[:, :, start:end]], axis=-1), axis=-1)
    probs_x = jax.nn.softmax(prefix[:, :, chunk:], axis=-1)
    probs_z = probs_z.astype(v_x.dtype)
    own_probs = probs_z[..., end:].reshape(batch, heads, chunk // size, size, size)
    own_out = jnp.matmul(own_probs, by_block(v_z)[:, :, start // size:end // size]).reshape(batch, heads, chunk,
                                                                                            head_dim)
    out_z.append(jnp.matmul(probs_z[..., :end], v_x[:, :, :end]) + own_out)
    out_x.append(jnp.matmul(probs_x.astype(v_x.dtype), v_x[:, :, :end]))
  return jnp.swapaxes(jnp.concatenate(out_z + out_x, axis=2), 1, 2)
