"""The transformer denoiser: shapes, logical axes, time conditioning, bidirectionality."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from md4_jax.models.attention import CAUSAL, Mask, attention
from md4_jax.models.layers import rope
from md4_jax.models.transformer import Transformer
from tests.conftest import transformer_config

CFG = transformer_config(vocab_size=11, seq_len=8, num_layers=2, width=32, num_heads=2)


@pytest.fixture(scope="module")
def model():
  net = Transformer(CFG, nnx.Rngs(0))
  # Zero-init head means uniform predictions; perturb it so the tests below can see the inputs.
  net.head.kernel[...] = jax.random.normal(jax.random.key(1), net.head.kernel[...].shape)
  for block in net.blocks:
    block.modulation.kernel[...] = 0.1 * jax.random.normal(jax.random.key(2), block.modulation.kernel[...].shape)
  return net


def test_output_shape_and_mask_input(model):
  z = jnp.full((3, 8), CFG.vocab_size)  # all-mask input uses id V
  logits = model(z, jnp.full((3,), 0.5))
  assert logits.shape == (3, 8, CFG.vocab_size)
  assert np.all(np.isfinite(logits))


def test_untrained_model_predicts_uniformly():
  logits = Transformer(CFG, nnx.Rngs(0))(jnp.zeros((2, 8), jnp.int32), jnp.ones((2,)))
  np.testing.assert_array_equal(logits, 0.0)


def test_every_parameter_has_logical_axes():
  _, state = nnx.split(Transformer(CFG, nnx.Rngs(0)))
  for path, variable in nnx.to_flat_state(state):
    names = variable.get_metadata().get("out_sharding")
    assert names is not None and len(names) == variable.get_value().ndim, path


def test_time_conditioning_changes_output(model):
  z = jnp.array([[1, 2, CFG.vocab_size, 4, 5, 6, 7, 8]])
  assert not np.allclose(model(z, jnp.array([0.1])), model(z, jnp.array([0.9])))
  unconditioned = Transformer(dataclasses.replace(CFG, time_conditioning=False), nnx.Rngs(0))
  unconditioned.head.kernel[...] = model.head.kernel[...]
  np.testing.assert_array_equal(unconditioned(z, jnp.array([0.1])), unconditioned(z, jnp.array([0.9])))


def test_attention_is_bidirectional(model):
  z = jnp.array([[1, 2, 3, 4, 5, 6, 7, 8]])
  changed_last = z.at[0, -1].set(9)
  # The first position sees a change at the last one (a causal model would not).
  assert not np.allclose(model(z, jnp.ones(1))[0, 0], model(changed_last, jnp.ones(1))[0, 0])


def test_rope_preserves_norm_and_encodes_relative_position():
  x = jax.random.normal(jax.random.key(0), (1, 6, 1, 8))
  rotated = rope(x)
  np.testing.assert_allclose(jnp.linalg.norm(rotated, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
  same = jnp.broadcast_to(x[:, :1], x.shape)
  r = rope(same)[0, :, 0]  # the same vector at every position
  # <R_i q, R_j k> depends only on i - j.
  np.testing.assert_allclose(r[0] @ r[2], r[3] @ r[5], rtol=1e-4)


def test_bad_shapes_are_rejected():
  with pytest.raises(ValueError, match="num_heads"):
    transformer_config(vocab_size=5, seq_len=4, width=30, num_heads=4)
  with pytest.raises(ValueError, match="positions"):
    transformer_config(vocab_size=5, seq_len=4, width=32, num_heads=2, positions="alibi")


@pytest.mark.slow
@pytest.mark.parametrize("mask", [None, CAUSAL, Mask("block_causal", 3), Mask("block_diffusion", 2)],
                         ids=["none", "causal", "block_causal", "block_diffusion"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_attention_gradient_is_autodiffs(mask, dtype):
  """The hand-written backward pass (heads-major matmuls, fast on XLA:CPU) equals autodiff of the forward."""
  from md4_jax.models.attention import _attention_forward
  keys = jax.random.split(jax.random.key(1), 4)
  q, k, v = (jax.random.normal(key, (2, 8, 3, 8)).astype(dtype) for key in keys[:3])
  cotangent = jax.random.normal(keys[3], (2, 8, 3, 8))

  def loss(f):
    return lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * cotangent)

  written = jax.grad(loss(lambda q, k, v: attention(q, k, v, mask=mask)), argnums=(0, 1, 2))(q, k, v)
  autodiff = jax.grad(loss(lambda q, k, v: _attention_forward(q, k, v, mask)[0]), argnums=(0, 1, 2))(q, k, v)
  tolerance = {"float32": 1e-5, "bfloat16": 3e-2}[dtype]
  for mine, reference in zip(written, autodiff):
    assert mine.dtype == reference.dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(np.asarray(mine, np.float32), np.asarray(reference, np.float32),
                               rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_the_library_kernel(causal):
  """The heads-major form (fast on XLA:CPU) is the same function as jax.nn.dot_product_attention."""
  q, k, v = (jax.random.normal(key, (2, 7, 3, 8)) for key in jax.random.split(jax.random.key(0), 3))
  expected = jax.nn.dot_product_attention(q, k, v, is_causal=causal)
  np.testing.assert_allclose(attention(q, k, v, causal=causal), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("window", ["prefix", "dual"])
def test_a_cached_pass_over_a_current_cache_is_the_whole_pass(model, window, scan_layers):
  """extend over a chunk, against the keys and values of the same sequence (a refresh), gives the whole pass's
  hidden states at the chunk: the sampling caches are exact while nothing else changed. (Block diffusion's
  exact cache is checked at its sampler: cached and uncached draws are equal.)"""
  net = Transformer(dataclasses.replace(CFG, scan_layers=True), nnx.Rngs(0)) if scan_layers else model
  z = jax.random.randint(jax.random.key(3), (2, CFG.seq_len), 0, CFG.vocab_size + 1)
  t = jnp.asarray([0.3, 0.8])
  positions, (start, end) = jnp.arange(CFG.seq_len), (2, 5)
  whole = net.features(z, t)
  refreshed, cache = net.extend(z, positions, t_B=t)
  np.testing.assert_allclose(refreshed, whole, rtol=1e-5, atol=1e-5)
  last = CFG.seq_len if window == "prefix" else end  # prefix: the block and everything after it
  sees = (positions < start) | ((positions >= end) & (window == "dual"))
  chunk, chunk_kv = net.extend(z[:, start:last], positions[start:last], cache, sees, t_B=t)
  np.testing.assert_allclose(chunk[:, :end - start], whole[:, start:end], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(chunk_kv[0], cache[0][:, :, start:last], rtol=1e-5, atol=1e-5)
  # Another sequence's keys and values change the chunk's states: the cache is really read.
  _, stale = net.extend(jnp.roll(z, 1, axis=1), positions, t_B=t)
  changed, _ = net.extend(z[:, start:last], positions[start:last], stale, sees, t_B=t)
  assert np.abs(np.asarray(changed[:, :end - start] - whole[:, start:end])).max() > 1e-3


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_a_cached_pass_with_each_rows_positions_and_visibility_is_each_rows_own_pass(positions):
  """extend with [B, C] positions and a [B, C, S + C] visibility (block diffusion's rows in different blocks)
  gives each row what a pass over it alone with its own [C] positions and [S] visibility gives."""
  net = Transformer(dataclasses.replace(CFG, positions=positions), nnx.Rngs(0))
  z = jax.random.randint(jax.random.key(4), (3, CFG.seq_len), 0, CFG.vocab_size)
  t = jnp.asarray([0.3, 0.5, 0.8])
  _, cache = net.extend(z, jnp.arange(CFG.seq_len), t_B=t)
  starts, size = [1, 4, 2], 2
  positions_BxC = jnp.asarray([[start, start + 1] for start in starts])
  sees_BxS = jnp.arange(CFG.seq_len)[None] < jnp.asarray(starts)[:, None]
  sees_BxCxT = jnp.broadcast_to(jnp.concatenate([sees_BxS, jnp.ones((3, size), bool)], axis=1)[:, None],
                                (3, size, CFG.seq_len + size))
  chunk_BxC = jnp.take_along_axis(z, positions_BxC, axis=1)
  together, kv = net.extend(chunk_BxC, positions_BxC, cache, sees_BxCxT, t_B=t)
  for row, start in enumerate(starts):
    one = slice(row, row + 1)
    alone, alone_kv = net.extend(chunk_BxC[one], positions_BxC[row], tuple(x[:, one] for x in cache), sees_BxS[row],
                                 t_B=t[one])
    np.testing.assert_allclose(together[one], alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kv[0][:, one], alone_kv[0], rtol=1e-5, atol=1e-5)
  # Rows really differ in what they see: a row's states change when another row's positions are used.
  shared, _ = net.extend(chunk_BxC, positions_BxC[0], cache, sees_BxS[0], t_B=t)
  assert np.abs(np.asarray(shared[1] - together[1])).max() > 1e-3
