"""The transformer's Llama / Qwen variants (grouped-query attention, q/k/v biases, q/k norms, a head size of its
own, tied embeddings, the rotary base and the norm epsilon), each against an exact property."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from md4_jax.core import diffusion
from md4_jax.errors import UserError
from md4_jax.models.layers import rms_norm, rope
from md4_jax.models.transformer import Transformer
from md4_jax.run import config_check
from tests.conftest import override, reference, transformer_config

CFG = transformer_config(vocab_size=13, seq_len=8, num_layers=2, width=32, num_heads=4, time_conditioning=False)
TOKENS = jax.random.randint(jax.random.key(3), (2, 8), 0, 14)
T = jnp.zeros(2)


def randomized(cfg, seed: int = 0) -> Transformer:
  """A model whose every parameter (norm scales, biases and the zero-init head too) is random."""
  net = Transformer(cfg, nnx.Rngs(seed))
  graphdef, params = nnx.split(net)
  keys = iter(jax.random.split(jax.random.key(seed + 1), len(jax.tree.leaves(params))))
  params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape), params)
  return nnx.merge(graphdef, params)


def test_grouped_query_attention_is_multi_head_attention_with_shared_keys_and_values():
  grouped = randomized(dataclasses.replace(CFG, num_kv_heads=2, qkv_bias=True))
  full = Transformer(dataclasses.replace(CFG, qkv_bias=True), nnx.Rngs(0))
  _, full_params = nnx.split(full)
  graphdef, params = nnx.split(grouped)
  for block, source in zip(full.blocks, grouped.blocks):
    for layer in ("query", "out"):
      nnx.update(getattr(block.attention, layer), nnx.state(getattr(source.attention, layer)))
    for layer in ("key", "value"):  # kv head g serves query heads 2g and 2g + 1
      getattr(block.attention, layer).kernel[...] = jnp.repeat(getattr(source.attention, layer).kernel[...], 2, axis=1)
      getattr(block.attention, layer).bias[...] = jnp.repeat(getattr(source.attention, layer).bias[...], 2, axis=0)
    for layer in ("attn_norm", "mlp_norm", "mlp"):
      nnx.update(getattr(block, layer), nnx.state(getattr(source, layer)))
  for layer in ("embed", "final_norm", "head"):
    setattr(full, layer, getattr(grouped, layer))
  assert grouped.blocks[0].attention.key.kernel[...].shape == (32, 2, 8)
  np.testing.assert_allclose(grouped(TOKENS, T), full(TOKENS, T), rtol=1e-5, atol=1e-5)
  assert grouped.empty_cache(2)[0].shape == (2, 2, 8, 2, 8)  # the cache holds the kv heads only


def test_tied_embeddings_use_the_token_rows_as_the_output_layer():
  tied = randomized(dataclasses.replace(CFG, tie_embeddings=True))
  assert tied.head is None
  h = tied.features(TOKENS, T)
  expected = h @ tied.embed[...][:13].T
  np.testing.assert_allclose(tied.head_logits(h), expected, rtol=1e-5, atol=1e-5)
  fused = tied.head_loss(h.reshape(16, -1), TOKENS.reshape(-1) % 13)
  np.testing.assert_allclose(fused, diffusion.token_nll(expected, TOKENS % 13).reshape(-1), rtol=1e-5, atol=1e-5)
  # The embedding's gradient is the sum of its two uses': an untied model with the same output layer, summed.
  untied = Transformer(CFG, nnx.Rngs(0))
  untied_graph, untied_params = nnx.split(untied)
  tied_graph, tied_params = nnx.split(tied)
  untied_params = nnx.merge_state(untied_params, tied_params)  # the tied model's blocks, norms and embedding
  untied_params["head"]["kernel"][...] = tied_params["embed"][...][:13].T
  weights = jax.random.normal(jax.random.key(5), (2, 8, 13))
  loss = lambda graph: lambda p: jnp.sum(weights * nnx.merge(graph, p)(TOKENS, T))  # noqa: E731
  tied_grad, untied_grad = jax.grad(loss(tied_graph))(tied_params), jax.grad(loss(untied_graph))(untied_params)
  np.testing.assert_allclose(untied_grad["head"]["kernel"][...].T + untied_grad["embed"][...][:13],
                             tied_grad["embed"][...][:13], rtol=1e-4, atol=1e-5)


def test_query_key_norms_make_attention_blind_to_the_projections_scale():
  def change_after_scaling(net, factor):
    before = net(TOKENS, T)
    for block in net.blocks:
      block.attention.query.kernel[...] *= factor
      block.attention.key.kernel[...] *= factor
    return np.abs(np.asarray(net(TOKENS, T) - before)).max()
  normed = randomized(dataclasses.replace(CFG, qk_norm=True, head_dim=16))
  assert normed.blocks[0].attention.query_norm.scale[...].shape == (16,)
  assert change_after_scaling(normed, 3.0) < 1e-4
  assert change_after_scaling(randomized(CFG), 3.0) > 1e-2


def test_query_key_value_biases_are_read():
  biased = randomized(dataclasses.replace(CFG, qkv_bias=True))
  before = biased(TOKENS, T)
  biased.blocks[0].attention.value.bias[...] += 1.0
  assert np.abs(np.asarray(biased(TOKENS, T) - before)).max() > 1e-2


def test_rms_norm_with_its_epsilon_and_its_gradient():
  x = jax.random.normal(jax.random.key(0), (3, 6))
  scale = jax.random.normal(jax.random.key(1), (6,))
  formula = lambda x, s: x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + 0.5) * s  # noqa: E731
  np.testing.assert_allclose(rms_norm(x, scale, 0.5), formula(x, scale), rtol=1e-6)
  weights = jax.random.normal(jax.random.key(2), (3, 6))
  ours = jax.grad(lambda x, s: jnp.sum(weights * rms_norm(x, s, 0.5)), argnums=(0, 1))(x, scale)
  autodiff = jax.grad(lambda x, s: jnp.sum(weights * formula(x, s)), argnums=(0, 1))(x, scale)
  for a, b in zip(ours, autodiff):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_rope_base():
  x = jax.random.normal(jax.random.key(0), (1, 5, 1, 4))
  angles = np.arange(5)[:, None] / 500.0 ** (np.arange(0, 4, 2) / 4)  # [L, K/2]
  x1, x2 = np.asarray(x[0, :, 0, :2]), np.asarray(x[0, :, 0, 2:])
  expected = np.concatenate([x1 * np.cos(angles) - x2 * np.sin(angles), x2 * np.cos(angles) + x1 * np.sin(angles)], -1)
  np.testing.assert_allclose(rope(x, theta=500.0)[0, :, 0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_a_grouped_cached_pass_is_the_whole_pass(scan_layers):
  """The sampling caches' pass (extend) with kv heads fewer than query heads: as test_transformer's check."""
  net = randomized(dataclasses.replace(CFG, num_kv_heads=1, qk_norm=True, scan_layers=scan_layers))
  positions, (start, end) = jnp.arange(8), (2, 5)
  whole = net.features(TOKENS, T)
  refreshed, cache = net.extend(TOKENS, positions)
  np.testing.assert_allclose(refreshed, whole, rtol=1e-5, atol=1e-5)
  sees = (positions < start) | (positions >= end)
  chunk, _ = net.extend(TOKENS[:, start:end], positions[start:end], cache, sees)
  np.testing.assert_allclose(chunk, whole[:, start:end], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"model__transformer__num_kv_heads": 3}, r"num_kv_heads=3 must divide model.transformer.num_heads=4"),
    ({"model__transformer__head_dim": 7}, r"head_dim=7 must be even"),
    ({"model__transformer__norm_eps": 0.0}, r"norm_eps=0.0 must be positive"),
])
def test_bad_variant_values_are_refused(change, message):
  with pytest.raises(UserError, match=message):
    config_check.validate(override(reference(), **change), reference(), "params")
