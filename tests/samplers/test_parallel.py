"""sampler.name='parallel' (samplers/parallel.py): threshold decoding, its blocks, and the approximate KV caches
against the uncached sampler."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from md4_jax import models, samplers
from md4_jax.samplers import parallel, parallel_cache
from md4_jax.core import per_token
from md4_jax.core.schedules import get_schedule
from tests.conftest import sampler_settings
from tests.core.test_block_diffusion import V, random_network
from tests.samplers.test_samplers import MARGINALS, all_masked, jitted_sampler, markov_denoiser
from tests.samplers.test_samplers import L as CHAIN_L
from tests.samplers.test_samplers import V as CHAIN_V

LENGTH = 12
SCHEDULE = get_schedule("cosine")


def draw(network, settings, z_BxL, key=0, time_conditioning=False, schedule=SCHEDULE):
  """(tokens, NFE, order) from the parallel sampler over a transformer module, its caches included. key: a seed,
  or a key array (one key per row draws each row with its own key)."""
  run = jax.jit(lambda key, z: samplers.sample(models.Network(network), key, schedule, z, settings, vocab_size=V,
                                               time_dependent=time_conditioning, return_order=True,
                                               module=network))
  return [np.asarray(x) for x in run(jax.random.key(key) if isinstance(key, int) else key, z_BxL)]


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


def rows_in_different_places():
  """Four rows that start in different blocks (of 4): rows 0, 1 and 2 have only block 0, 1 resp. 2 masked, row 3
  two positions of each block."""
  given = np.asarray([[3, 1, 0, 2, 4, 4, 1, 0, 2, 3, 3, 1]] * 4, np.int32)
  z_BxL = np.full((4, LENGTH), V, np.int32)
  for row in range(3):
    z_BxL[row] = given[row]
    z_BxL[row, 4 * row:4 * row + 4] = V
  z_BxL[3, [0, 1, 5, 6, 9, 10]] = given[3, [0, 1, 5, 6, 9, 10]]
  return jnp.asarray(z_BxL)


def calls_per_block(order_L, given_L, size: int = 4):
  """A row's own calls in each block: the distinct clock values of the positions it filled there."""
  return [len(set(order_L[start:start + size][~given_L[start:start + size]])) for start in range(0, LENGTH, size)]


@pytest.mark.parametrize("rows", ["own", "together"])
@pytest.mark.parametrize("kv_cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("time_conditioning, scan_layers, cache_refresh, threshold, schedule", [
    (False, False, 0, 0.9, SCHEDULE), (True, True, 2, 1.0, per_token.TokenPoly(jnp.linspace(0.5, 3.0, V)))],
    ids=["md4", "genmd4 schedule, time-conditioned, refresh every 2, one token per call"])
def test_each_row_draws_what_it_draws_alone_and_advances_as_rows_says(kv_cache, time_conditioning, scan_layers,
                                                                     cache_refresh, threshold, schedule, rows):
  network = random_network(LENGTH, scan_layers=scan_layers, network_only=True, time_conditioning=time_conditioning)
  settings = sampler_settings("parallel", block_length=4, threshold=threshold, kv_cache=kv_cache,
                              cache_refresh=cache_refresh, rows=rows)
  z_BxL = rows_in_different_places()
  keys_B = parallel.row_keys(jax.random.key(7), len(z_BxL))
  tokens, nfe, order = draw(network, settings, z_BxL, key=jax.random.key(7), time_conditioning=time_conditioning,
                            schedule=schedule)
  own_calls = []
  for row in range(len(z_BxL)):
    alone = draw(network, settings, z_BxL[row:row + 1], key=keys_B[row:row + 1],
                 time_conditioning=time_conditioning, schedule=schedule)
    np.testing.assert_array_equal(tokens[row], alone[0][0])
    np.testing.assert_array_equal(order[row], alone[2][0])  # each row's own clock: its calls
    own_calls.append(int(alone[1]))
  given_BxL = np.asarray(z_BxL) != V
  per_block = np.asarray([calls_per_block(order[row], given_BxL[row]) for row in range(len(z_BxL))])
  np.testing.assert_array_equal(per_block.sum(axis=1), np.max(order, axis=1))
  lockstep = int(per_block.max(axis=0).sum())  # each block waiting for its slowest row
  assert max(own_calls) < lockstep  # the case separates the two
  steps = max(own_calls) if rows == "own" else lockstep  # 'own': a batch costs its slowest row's calls
  if kv_cache == "none":
    assert int(nfe) == steps
  else:  # a loop step runs a refresh pass, a cached pass, or both
    assert steps <= int(nfe) <= 2 * steps


@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
def test_a_cached_call_gives_each_row_the_logits_it_gets_alone(kv_cache):
  """Rows in blocks 0, 1, 2 and 1: row 0 refreshes while the others reuse caches that predate tokens filled since;
  each row's logits (and cache) equal those of the same call on that row alone, to float32 rounding (which differs
  with the batch size on CPUs with AVX-512 or AMX: 7e-5 on a cached key of magnitude 2 there; a row seeing the
  wrong positions is off by O(1))."""
  network = random_network(LENGTH, network_only=True, time_conditioning=True)
  settings = sampler_settings("parallel", block_length=4, kv_cache=kv_cache)
  z_BxL = rows_in_different_places()
  start_B, live_B = jnp.asarray([0, 4, 8, 4]), jnp.ones(4, bool)
  filled_BxL = jnp.where((jnp.arange(LENGTH) % 4 == 1) & (z_BxL == V), 2, z_BxL)  # one token more in each block

  calls_B = jnp.asarray([0, 1, 1, 1])  # at the second call row 0 refreshes again (as at a new block), the rest reuse

  def two_calls(z_BxL, filled_BxL, start_B, live_B, calls_B):
    call = parallel_cache.cached_call(network, SCHEDULE, settings, V, *z_BxL.shape)
    _, _, cache = call(z_BxL, start_B, jnp.zeros_like(start_B), live_B, network.empty_cache(*z_BxL.shape))
    return call(filled_BxL, start_B, calls_B, live_B, cache)

  logits, passes, cache = jax.jit(two_calls)(z_BxL, filled_BxL, start_B, live_B, calls_B)
  assert int(passes) == 2
  for row in range(len(z_BxL)):
    one = slice(row, row + 1)
    alone_logits, _, alone_cache = jax.jit(two_calls)(z_BxL[one], filled_BxL[one], start_B[one], live_B[one],
                                                      calls_B[one])
    np.testing.assert_allclose(logits[row], alone_logits[0], rtol=2e-4, atol=2e-4)
    for got, want in zip(cache, alone_cache):
      np.testing.assert_allclose(got[:, row], want[:, 0], rtol=2e-4, atol=2e-4)


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


def test_blocks_that_do_not_tile_the_sequence_are_refused():
  network = random_network(LENGTH, network_only=True)
  for kv_cache in ("none", "dual"):
    with pytest.raises(ValueError, match="block_length=5 must divide the sequence length 12"):
      draw(network, sampler_settings("parallel", block_length=5, kv_cache=kv_cache), prompted())
