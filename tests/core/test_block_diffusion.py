"""Block diffusion's bound (core/block_diffusion.py): its two exact limits and its one-call training layout.

- block_size = L: MD4's bound on the same z_t and t (one block; the clean half is never seen).
- block_size = 1: in expectation over the masks (all 2^L enumerated) and t (Gauss-Legendre quadrature), the
  bound is (alpha_0 - alpha_1) sum_l nll_l + L log V (1 - alpha_0 + alpha_1), with nll_l = -log p(x_l | mask, x_<l)
  the network's own next-token outputs: the AR likelihood of those outputs, up to the schedule's eps.
- The [z | x] layout under the block-diffusion mask scores every block as a direct loop over blocks does.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from md4_jax import models
from md4_jax.core import block_diffusion, diffusion
from md4_jax.core.attention_masks import Mask
from md4_jax.core.fused_head import token_nll
from md4_jax.core.schedules import get_schedule
from md4_jax.models.transformer import Transformer
from tests.conftest import transformer_config

V = 5


def random_network(length: int, positions: str = "rope", scan_layers: bool = False, network_only: bool = False,
                   time_conditioning: bool = False, num_layers: int = 2):
  """A transformer (time-independent unless asked) with every weight random (the zero-initialised head and
  modulations too), as a Network (or the module itself with network_only)."""
  network = Transformer(transformer_config(vocab_size=V, seq_len=length, num_layers=num_layers, width=16, num_heads=2,
                                          time_conditioning=time_conditioning, positions=positions,
                                          scan_layers=scan_layers),
                        nnx.Rngs(0))
  graphdef, params = nnx.split(network)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  module = nnx.merge(graphdef, jax.tree.unflatten(
      treedef, [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]))
  return module if network_only else models.Network(module)


@pytest.mark.parametrize("timesteps", [0, 10])
@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_one_block_is_md4_on_the_same_draw(timesteps, positions):
  net, schedule = random_network(8, positions), get_schedule("cosine")
  x0 = jax.random.randint(jax.random.key(2), (6, 8), 0, V)
  key = jax.random.key(3)
  ours = block_diffusion.elbo_terms(net, x0, key, schedule, vocab_size=V, block_size=8, timesteps=timesteps)
  md4 = diffusion.elbo_terms(net.features, x0, key, schedule, vocab_size=V, timesteps=timesteps,
                             head_loss=net.head_loss)
  assert float(jnp.sum(md4["diffusion"])) > 0  # some tokens were masked
  for name in ("diffusion", "reconstruction", "prior", "loss", "num_tokens"):
    np.testing.assert_allclose(ours[name], md4[name], rtol=2e-5, atol=1e-5)


def test_blocks_of_one_are_the_autoregressive_likelihood_in_expectation():
  length, schedule = 3, get_schedule("linear")
  net = random_network(length)
  x0 = jnp.asarray([[1, 4, 2]], jnp.int32)
  # nll_l from the network's own outputs: with blocks of one, position l sees its mask and x_<l only.
  nll_L = block_diffusion.token_nll_in_layout(net, jnp.full_like(x0, V), x0, 1)[0]
  nodes, weights = np.polynomial.legendre.leggauss(24)
  times, weights = (nodes + 1) / 2, weights / 2  # on [0, 1]
  masks = np.asarray(list(itertools.product([False, True], repeat=length)))  # every z, [2^L, L]
  rows_t, rows_masked = np.repeat(times, len(masks)), np.tile(masks, (len(times), 1))  # one row per (t, z)
  mask_prob_R = np.asarray(schedule.mask_prob(jnp.asarray(rows_t, jnp.float32)))
  probability_R = np.prod(np.where(rows_masked, mask_prob_R[:, None], 1 - mask_prob_R[:, None]), axis=1)
  z = jnp.where(jnp.asarray(rows_masked), V, jnp.tile(x0, (len(rows_t), 1)))
  t_RxK = jnp.repeat(jnp.asarray(rows_t, jnp.float32)[:, None], length, axis=1)
  loss_R = block_diffusion.terms_given(net, jnp.tile(x0, (len(rows_t), 1)), z, t_RxK, schedule, vocab_size=V)["loss"]
  expected_loss = float(np.sum(np.repeat(weights, len(masks)) * probability_R * np.asarray(loss_R, np.float64)))
  alpha_0, alpha_1 = (float(schedule.alpha(jnp.float32(t))) for t in (0.0, 1.0))
  exact = (alpha_0 - alpha_1) * float(jnp.sum(nll_L)) + length * np.log(V) * (1 - alpha_0 + alpha_1)
  np.testing.assert_allclose(expected_loss, exact, rtol=1e-5)
  np.testing.assert_allclose(expected_loss, float(jnp.sum(nll_L)), rtol=1e-3)  # AR's NLL, up to eps = 1e-4


@pytest.mark.parametrize("length, block_size", [(4, 1), (8, 2), (8, 4)])
def test_the_training_layout_scores_blocks_as_a_direct_loop(length, block_size):
  net, schedule = random_network(length), get_schedule("linear")
  keys = jax.random.split(jax.random.key(4), 3)
  x0 = jax.random.randint(keys[0], (3, length), 0, V)
  t_BxK = jax.random.uniform(keys[1], (3, length // block_size))
  z = jnp.where(jax.random.uniform(keys[2], x0.shape) < 0.5, V, x0)
  layout = block_diffusion.terms_given(net, x0, z, t_BxK, schedule, vocab_size=V)["diffusion"]
  loop = jnp.zeros(3)
  for block in range(length // block_size):
    start, end = block * block_size, (block + 1) * block_size
    inputs = jnp.concatenate([x0[:, :start], z[:, start:end]], axis=1)  # the clean past, then the noised block
    logits = net(inputs, jnp.zeros(3), positions_L=jnp.arange(end), mask=Mask("block_causal", block_size))
    nll = token_nll(logits[:, start:], x0[:, start:end])
    t = t_BxK[:, block][:, None]
    loop += jnp.sum(jnp.where(z[:, start:end] == V, -schedule.weight(t) * nll, 0.0), axis=1)
  assert float(jnp.sum(loop)) > 0  # some positions were masked
  np.testing.assert_allclose(layout, loop, rtol=2e-5)


def test_a_block_never_sees_later_blocks():
  length, block_size = 8, 2
  net = random_network(length)
  x0 = jax.random.randint(jax.random.key(5), (1, length), 0, V)
  z = jnp.full_like(x0, V)
  nll = block_diffusion.token_nll_in_layout(net, z, x0, block_size)
  changed = x0.at[0, 2:].set((x0[0, 2:] + 1) % V)  # block 0's prediction may not depend on later tokens
  nll_changed = block_diffusion.token_nll_in_layout(net, z, changed, block_size)
  np.testing.assert_allclose(nll[0, :2], nll_changed[0, :2], rtol=1e-6)
  assert not np.allclose(nll[0, 2:], nll_changed[0, 2:])  # (those targets changed)


def test_eval_times_give_each_block_a_uniform_time():
  t_BxK = block_diffusion.block_times(None, 2, 4, t_B=jnp.asarray([0.1, 0.9]))
  np.testing.assert_allclose(t_BxK, [[0.1, 0.35, 0.6, 0.85], [0.9, 0.15, 0.4, 0.65]], atol=1e-6)


def test_clipped_training_times_stay_in_their_range_and_the_default_is_the_bound():
  key = jax.random.key(6)
  plain = block_diffusion.block_times(key, 8, 4)
  np.testing.assert_array_equal(block_diffusion.block_times(key, 8, 4, clip=(0.0, 1.0)), plain)
  clipped = np.asarray(block_diffusion.block_times(key, 8, 4, clip=(0.3, 0.8)))
  assert clipped.min() >= 0.3 and clipped.max() < 0.8
  np.testing.assert_allclose(clipped, 0.3 + 0.5 * np.asarray(plain), rtol=1e-6)
  given = block_diffusion.block_times(key, 2, 4, t_B=jnp.asarray([0.1, 0.9]), clip=(0.3, 0.8))
  assert float(given[0, 0]) == pytest.approx(0.1)  # evaluation's times are never clipped
