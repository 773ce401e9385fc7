"""Block diffusion's chunked attention (models/block_attention.py) equals the dense masked form, values and
gradients, for several block sizes, lengths and chunk counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4_jax.core.attention_masks import Mask
from md4_jax.models import attention as attention_lib
from md4_jax.models.block_attention import block_diffusion_attention, chunk_count


def dense(q, k, v, block_size):
  return attention_lib._attention(q, k, v, Mask("block_diffusion", block_size))


@pytest.mark.parametrize("length, block_size", [(8, 1), (8, 2), (12, 4), (24, 2), (36, 4)])
def test_values_and_gradients_equal_the_dense_form(length, block_size):
  keys = jax.random.split(jax.random.key(length + block_size), 4)
  q, k, v = (jax.random.normal(key, (2, 2 * length, 3, 8)) for key in keys[:3])
  cotangent = jax.random.normal(keys[3], q.shape)
  ours = lambda q, k, v: jnp.sum(block_diffusion_attention(q, k, v, block_size) * cotangent)  # noqa: E731
  theirs = lambda q, k, v: jnp.sum(dense(q, k, v, block_size) * cotangent)  # noqa: E731
  np.testing.assert_allclose(block_diffusion_attention(q, k, v, block_size), dense(q, k, v, block_size),
                             atol=1e-5, rtol=1e-5)
  for got, want in zip(jax.grad(ours, argnums=(0, 1, 2))(q, k, v), jax.grad(theirs, argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_chunks_split_the_blocks_evenly():
  assert [chunk_count(n) for n in (1, 2, 3, 8, 9, 12, 256)] == [1, 2, 3, 8, 3, 6, 8]


def test_bfloat16_matches_the_dense_form_to_its_precision():
  q, k, v = (jax.random.normal(key, (1, 32, 2, 16), jnp.bfloat16) for key in jax.random.split(jax.random.key(0), 3))
  got = block_diffusion_attention(q, k, v, 4)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(dense(q, k, v, 4), np.float32), atol=3e-2)
