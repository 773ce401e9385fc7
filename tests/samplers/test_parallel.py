"""sampler.name='parallel' (samplers/parallel.py): threshold decoding, its blocks, and the approximate KV caches
against the uncached sampler."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from md4_jax import models, samplers
from md4_jax.core.schedules import get_schedule
from tests.conftest import sampler_settings
from tests.core.test_block_diffusion import V, random_network
from tests.samplers.test_samplers import MARGINALS, all_masked, jitted_sampler, markov_denoiser
from tests.samplers.test_samplers import L as CHAIN_L
from tests.samplers.test_samplers import V as CHAIN_V

LENGTH = 12
SCHEDULE = get_schedule("cosine")


def draw(network, settings, z_BxL, key=0, time_conditioning=False):
  """(tokens, NFE, order) from the parallel sampler over a transformer module, its caches included."""
  run = jax.jit(lambda key, z: samplers.sample(models.Network(network), key, SCHEDULE, z, settings, vocab_size=V,
                                               time_dependent=time_conditioning, return_order=True,
                                               module=network))
  return [np.asarray(x) for x in run(jax.random.key(key), z_BxL)]


def prompted(rows: int = 4):
  return jnp.full((rows, LENGTH), V, jnp.int32).at[:, :3].set(jnp.asarray([[2, 0, 1]]))


@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
@pytest.mark.parametrize("time_conditioning, scan_layers, fallback", [(False, False, "confidence"),
                                                                      (True, True, "random")])
def test_refreshing_every_call_draws_what_no_cache_draws(kv_cache, time_conditioning, scan_layers, fallback):
  network = random_network(LENGTH, scan_layers=scan_layers, network_only=True, time_conditioning=time_conditioning)
  uncached = sampler_settings("parallel", block_length=4, threshold=1.0, fallback=fallback)
  drawn = {}
  for name, settings in (("none", uncached), ("refresh 1", dataclasses.replace(uncached, kv_cache=kv_cache,
                                                                                cache_refresh=1)),
                         ("refresh per block", dataclasses.replace(uncached, kv_cache=kv_cache))):
    drawn[name] = [draw(network, settings, prompted(), key=key, time_conditioning=time_conditioning)
                   for key in range(3)]
  for want, got in zip(drawn["none"], drawn["refresh 1"]):
    for want_part, got_part in zip(want, got):  # tokens, NFE, order
      np.testing.assert_array_equal(got_part, want_part)
  # The cached pass is not trivially the uncached one: refreshing once per block draws something else.
  assert any(not np.array_equal(stale[0], fresh[0]) for stale, fresh in zip(drawn["refresh per block"],
                                                                             drawn["none"]))


@pytest.mark.parametrize("kv_cache", ["none", "dual"])
def test_threshold_one_unmasks_one_token_per_call(kv_cache):
  network = random_network(LENGTH, network_only=True)
  tokens, nfe, order = draw(network, sampler_settings("parallel", block_length=3, threshold=1.0, kv_cache=kv_cache),
                            prompted())
  assert int(nfe) == LENGTH - 3 and np.all(tokens < V)
  for row in order:  # each call filled exactly one position, in every row
    np.testing.assert_array_equal(np.sort(row[3:]), np.arange(1, LENGTH - 2))


def test_a_low_threshold_fills_a_block_per_call_left_to_right():
  network = random_network(LENGTH, network_only=True)
  tokens, nfe, order = draw(network, sampler_settings("parallel", block_length=4, threshold=1e-6), prompted())
  assert int(nfe) == LENGTH // 4  # every masked token of a block passes at once
  np.testing.assert_array_equal(order[:, :3], 0)
  np.testing.assert_array_equal(order[:, 3:], np.repeat([[1, 2, 2, 2, 2, 3, 3, 3, 3]], 4, axis=0))
  np.testing.assert_array_equal(tokens[:, :3], np.asarray(prompted())[:, :3])


def sure_of_the_last_two(z_BxL, t_B):
  """Sure of the last two positions (p = 0.95 for token 0), unsure elsewhere, later positions a little surer."""
  del t_B
  sure = jnp.log(jnp.asarray([0.95, 0.05 / 3, 0.05 / 3, 0.05 / 3]))
  top_L = 0.3 + 0.02 * jnp.arange(CHAIN_L)
  unsure = jnp.log(jnp.stack([top_L] + [(1 - top_L) / 3] * 3, axis=-1))
  confident_L = jnp.arange(CHAIN_L) >= CHAIN_L - 2
  return jnp.broadcast_to(jnp.where(confident_L[:, None], sure, unsure), z_BxL.shape + (CHAIN_V,))


def parallel_order(settings, rows: int, key: int = 0):
  run = jax.jit(lambda key, z: samplers.sample(sure_of_the_last_two, key, SCHEDULE, z, settings, vocab_size=CHAIN_V,
                                               return_order=True))
  tokens, nfe, order = run(jax.random.key(key), all_masked(rows))
  return np.asarray(tokens), int(nfe), np.asarray(order)


def test_tokens_passing_the_threshold_and_the_best_one_are_unmasked():
  """At threshold 0.9 the first call fills exactly the two sure positions, then the most confident of the rest,
  one per call."""
  _, nfe, order = parallel_order(sampler_settings("parallel", threshold=0.9, temperature=0.0, fallback="confidence"),
                                 rows=2)
  np.testing.assert_array_equal(order, [[5, 4, 3, 2, 1, 1]] * 2)
  assert nfe == 5


def test_the_random_fallback_unmasks_a_uniformly_chosen_position():
  """fallback='random' at threshold 1.0: the first position filled is uniform over the row (the exact sampler's
  order), where 'confidence' always takes the surest."""
  _, nfe, order = parallel_order(sampler_settings("parallel", threshold=1.0, fallback="random"), rows=3000)
  assert nfe == CHAIN_L and np.all(np.sort(order, axis=1) == np.arange(1, CHAIN_L + 1))
  first_L = np.bincount(np.argmax(order == 1, axis=1), minlength=CHAIN_L)
  assert stats.chisquare(first_L).pvalue > 1e-4
  _, _, order = parallel_order(sampler_settings("parallel", threshold=1.0, fallback="confidence"), rows=50)
  assert set(np.argmax(order == 1, axis=1)) <= {CHAIN_L - 2, CHAIN_L - 1}


def test_one_call_draws_each_position_from_the_model():
  """Every token passes a tiny threshold, so one call fills the block: each position independently from the
  denoiser's conditional given the rest masked (the chain's marginals), at every position."""
  tokens, nfe = jitted_sampler(sampler_settings("parallel", threshold=1e-9), markov_denoiser)(
      jax.random.key(3), all_masked(4000))
  assert int(nfe) == 1
  tokens = np.asarray(tokens)
  for position in range(CHAIN_L):
    counts = np.bincount(tokens[:, position], minlength=CHAIN_V)
    assert stats.chisquare(counts, MARGINALS[position] * len(tokens)).pvalue > 1e-4
