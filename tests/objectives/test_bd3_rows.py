"""Block diffusion with the `parallel` sampler, every row through its own blocks (objectives/bd3_rows.py): each
row of a batch draws what it draws alone, with or without the exact cache, rows own or together; a batch's calls;
long samples in segments; a row that stops at end-of-text."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4_jax import models
from md4_jax.objectives.bd3 import BlockDiffusion
from tests.conftest import make_config, sampler_settings
from tests.core.test_block_diffusion import V, random_network

LENGTH, SIZE = 12, 4  # three blocks
# Rows that start in different places: nothing given; block 0 given whole; blocks 0 and 1 given whole (its cache
# catches up two blocks at its first call); two positions of every block given.
PROMPTS = [{}, dict.fromkeys(range(4), 1), dict.fromkeys(range(8), 2), {0: 3, 1: 1, 5: 2, 6: 3, 9: 1, 11: 2}]


def prompted(length: int = LENGTH):
  z = np.full((len(PROMPTS), length), V, np.int32)
  for row, prompt in enumerate(PROMPTS):
    for position, token in prompt.items():
      z[row, position] = token
  return jnp.asarray(z)


def bd3_parallel(network, *, trained=LENGTH, size=SIZE, shift=False, **changes):
  """A jitted (key, z) -> (tokens, NFE, order) for objective='bd3' with the parallel sampler."""
  config = make_config("unused.txt", objective="bd3", diffusion__bd3__block_size=size, data__seq_len=trained,
                       diffusion__shift=shift)
  objective = BlockDiffusion(config, V)
  settings = sampler_settings("parallel", steps=trained // size * 4, **{"threshold": 0.6, **changes})
  return objective, settings, jax.jit(lambda key, z: objective.sample(
      models.Network(network), key, z, settings, time_dependent=False, module=network))


def calls_per_block(order_L, sub: int):
  """A row's calls in each of its sub-blocks, read off its fill order (each call fills at least one position)."""
  last = [int(block.max()) for block in np.asarray(order_L).reshape(-1, sub)]
  return [high - max([0, *last[:block]]) if high else 0 for block, high in enumerate(last)]


@pytest.mark.slow
@pytest.mark.parametrize("block_length, shift", [(2, False), (0, True)])
def test_each_row_draws_what_it_draws_alone_cached_or_not_own_or_together(block_length, shift):
  network = random_network(LENGTH, network_only=True)
  keys_B, z_BxL = jax.random.split(jax.random.key(5), len(PROMPTS)), prompted()
  _, _, alone = bd3_parallel(network, shift=shift, block_length=block_length)
  rows = [alone(keys_B[row:row + 1], z_BxL[row:row + 1]) for row in range(len(PROMPTS))]
  tokens, order = (np.concatenate([np.asarray(row[part]) for row in rows]) for part in (0, 2))
  assert np.all(tokens < V) and all(tokens[row, p] == t for row, prompt in enumerate(PROMPTS) for p, t in prompt.items())
  assert [int(row[1]) for row in rows] == [int(o.max()) for o in order]  # alone, a call is a pass
  sub = block_length or SIZE
  per_block = np.asarray([calls_per_block(o, sub) for o in order])
  want_nfe = {"own": int(order.max()), "together": int(per_block.max(axis=0).sum())}
  assert want_nfe["own"] < want_nfe["together"]  # the case separates the two
  for kv_cache in ("none", "exact"):
    for moving in ("own", "together"):
      _, _, batch = bd3_parallel(network, shift=shift, block_length=block_length, kv_cache=kv_cache, rows=moving)
      batch_tokens, nfe, batch_order = batch(keys_B, z_BxL)
      np.testing.assert_array_equal(batch_tokens, tokens, err_msg=f"{kv_cache}, {moving}")
      np.testing.assert_array_equal(batch_order, order, err_msg=f"{kv_cache}, {moving}")
      assert int(nfe) == want_nfe[moving], (kv_cache, moving)


@pytest.mark.slow
def test_a_long_sample_in_segments_draws_the_whole_calls_tokens():
  """Segment by segment (generate.py's --length past data.seq_len) the rows' caches carry over: the same tokens as
  one call. Rows line up at each segment's end, so the calls are the sum of the segments' slowest rows'."""
  trained, size, length = 8, 2, 20  # the last segment is shorter: 8 + 8 + 4
  network = random_network(trained, network_only=True)
  objective, settings, whole = bd3_parallel(network, trained=trained, size=size, kv_cache="exact", block_length=0)
  z, key = prompted(length), jax.random.key(6)
  whole_tokens, whole_nfe, _ = whole(key, z)
  cache, clock, nfe, tokens = network.empty_cache(len(PROMPTS)), 0, 0, []
  segment = jax.jit(lambda z, first_block, cache, clock: objective.sample_segment(
      models.Network(network), key, z, settings, module=network, first_block=first_block, cache=cache,
      total_length=length, clock=clock))
  for begin in range(0, length, trained):
    tokens_BxS, segment_nfe, order_BxS, cache = segment(z[:, begin:begin + trained], begin // size, cache, clock)
    tokens.append(tokens_BxS)
    nfe, clock = nfe + int(segment_nfe), max(clock, int(jnp.max(order_BxS)))
  np.testing.assert_array_equal(np.concatenate(tokens, 1), whole_tokens)
  assert np.all(np.asarray(whole_tokens) < V) and nfe >= int(whole_nfe)


@pytest.mark.parametrize("ending_rows", [(0,), (0, 1, 2)])
def test_a_row_stops_at_its_own_end_of_text(ending_rows):
  """Blocks of 2 over 8 positions; a row's first token (given) says whether it ends: the denoiser is then sure of
  end-of-text (id 4) in block 1, and of 0 everywhere else, so each call fills a block. A row that drew end-of-text
  stops there (the rest of it is end-of-text) while the others go on; the batch makes its slowest row's calls."""
  config = make_config("unused.txt", objective="bd3", diffusion__bd3__block_size=2, data__seq_len=8)
  objective = BlockDiffusion(config, 5)

  def denoise(z_BxL, t_B, mask):  # rows are told apart by what they hold: the sampler serves them in any order
    del t_B, mask
    logits_BxLxV = jnp.full((*z_BxL.shape, 5), -30.0).at[..., 0].set(30.0)
    ends_BxL = (z_BxL[:, :1] == 3) & (jnp.arange(8) // 2 == 1)
    return jnp.where(ends_BxL[..., None], jnp.full_like(logits_BxLxV, -30.0).at[..., 4].set(30.0), logits_BxLxV)

  first_B = jnp.where(jnp.isin(jnp.arange(3), jnp.asarray(ending_rows)), 3, 1)
  settings = dataclasses.replace(sampler_settings("parallel", steps=8), end_id=4, stop_at_end=True)
  tokens, nfe, order = jax.jit(lambda key, z: objective.sample(denoise, key, z, settings, time_dependent=False,
                                                               module=None))(
      jax.random.key(0), jnp.full((3, 8), 5).at[:, 0].set(first_B))
  for row in range(3):
    want = [3, 0, 4, 4, 4, 4, 4, 4] if row in ending_rows else [1, 0, 0, 0, 0, 0, 0, 0]
    assert np.asarray(tokens[row]).tolist() == want
    assert int(np.max(order[row])) == (2 if row in ending_rows else 4)  # one call a block, up to its end
  assert int(nfe) == (2 if len(ending_rows) == 3 else 4)
