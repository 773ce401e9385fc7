"""objective='bd3' (objectives/bd3.py): its config checks, its block-by-block sampler against the true
distribution of a Markov chain, and a tiny run that trains, evaluates and samples."""

import dataclasses
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4_jax import models
from md4_jax.core.attention_masks import Mask
from md4_jax.errors import UserError
from md4_jax.models.transformer import write_cache
from md4_jax.objectives.bd3 import BlockDiffusion, cache_slot
from md4_jax.run import modes
from tests.conftest import make_config, reference, sampler_settings
from tests.core.test_block_diffusion import V as NETWORK_V
from tests.core.test_block_diffusion import random_network
from tests.samplers.test_samplers import MASK, L, V, chi_square_p_value, markov_denoiser
from tests.test_end_to_end import assert_same_arrays, metric_rows, saved_state, train_until_sigterm_at_step_7


def block_causal_markov_denoiser(z_BxL, t_B, *, mask):
  """The chain's true conditionals when position n sees only the blocks up to its own (what the block-causal
  mask lets a network see): later blocks are treated as masked."""
  block_L = np.arange(L) // mask.block_size
  rows = [markov_denoiser(jnp.where(jnp.asarray(block_L > block), MASK, z_BxL), t_B)[:, block_L == block]
          for block in range(L // mask.block_size)]
  return jnp.concatenate(rows, axis=1)


def bd3_sampler(block_size: int, settings):
  config = make_config("unused.txt", objective="bd3", diffusion__bd3__block_size=block_size, data__seq_len=L)
  objective = BlockDiffusion(config, V)
  return jax.jit(lambda key, z: objective.sample(block_causal_markov_denoiser, key, z, settings,
                                                 time_dependent=False, module=None))


@pytest.mark.slow
@pytest.mark.parametrize("block_size, settings", [(2, sampler_settings("ancestral", steps=300)),
                                                  (3, sampler_settings("exact")),
                                                  (6, sampler_settings("exact"))], ids=["ancestral_2", "exact_3",
                                                                                       "exact_6"])
def test_block_by_block_samples_follow_the_true_distribution(block_size, settings):
  tokens, nfe, order = bd3_sampler(block_size, settings)(jax.random.key(0), jnp.full((5000, L), MASK, jnp.int32))
  assert chi_square_p_value(tokens) > 1e-3
  block_L = np.arange(L) // block_size
  order = np.asarray(order)
  for block in range(L // block_size - 1):  # every token of a block is drawn before any of the next
    assert np.all(order[:, block_L == block].max(axis=1) < order[:, block_L == block + 1].min(axis=1))


def test_the_check_rejects_a_block_sampler_that_draws_a_blocks_tokens_independently():
  """The check above can fail: blocks of 2 sampled with one step each draw a block's two tokens independently."""
  tokens, _, _ = bd3_sampler(2, sampler_settings("ancestral", steps=3))(jax.random.key(0),
                                                                       jnp.full((5000, L), MASK, jnp.int32))
  assert chi_square_p_value(tokens) < 1e-6


@pytest.mark.parametrize("overrides, message", [
    ({"diffusion__bd3__block_size": 5}, "diffusion.bd3.block_size=5 must divide data.seq_len=16"),
    ({"diffusion__bd3__block_size": 0}, "diffusion.bd3.block_size=0 must divide"),
    ({"sampler__steps": 6}, "sampler.steps=6 must be a multiple of the 4 blocks"),
    ({"sampler__name": "semi_ar"}, "already samples block by block"),
    ({"diffusion__bd3__clip_low": 0.9, "diffusion__bd3__clip_high": 0.5}, "need 0 <= clip_low < clip_high <= 1"),
])
def test_bad_bd3_settings_fail_before_any_work(corpus_file, tmp_path, overrides, message):
  with pytest.raises(UserError, match=message):
    modes.main(make_config(corpus_file, objective="bd3", **overrides), tmp_path / "run", reference=reference())


def test_block_size_is_refused_under_other_objectives(corpus_file, tmp_path):
  with pytest.raises(UserError, match="diffusion.bd3.block_size=8 has no effect on this run: it applies to "
                                      "objective='bd3'"):
    modes.main(make_config(corpus_file, diffusion__bd3__block_size=8), tmp_path / "run", reference=reference())


@pytest.mark.slow
def test_bd3_run_trains_resumes_exactly_evaluates_and_samples(tmp_path, corpus_file, monkeypatch):
  config = make_config(corpus_file, objective="bd3")
  result = modes.main(config, tmp_path / "whole", "train", reference=reference())
  assert np.isfinite(result["eval/bpt"]) and result["eval/bpt"] < np.log2(28)
  assert train_until_sigterm_at_step_7(config, tmp_path / "resumed", monkeypatch) == 128 + signal.SIGTERM
  modes.main(config, tmp_path / "resumed", "train", reference=reference())
  assert metric_rows(tmp_path / "resumed") == metric_rows(tmp_path / "whole")
  assert_same_arrays(saved_state(tmp_path / "resumed", 12), saved_state(tmp_path / "whole", 12))
  evaluated = modes.main(config, tmp_path / "whole", "eval", reference=reference())
  assert np.isfinite(evaluated["eval/bpt"])
  samples = modes.main(config, tmp_path / "whole", "sample", reference=reference(), num_samples=3)
  assert len(samples["samples"]) == 3 and all(len(text) == 16 for text in samples["samples"])
  # Longer than trained (16): through the exact cache, whose slots slide; a prompt stays where it was put.
  config.sampler.kv_cache = "exact"
  longer = modes.main(config, tmp_path / "whole", "sample", reference=reference(), num_samples=2, length=40,
                      prompt="the ")
  assert all(len(text) == 40 and text.startswith("the ") for text in longer["samples"])
  assert np.all(np.asarray(longer["tokens"]) < 28)  # no mask id left
  assert longer["paths"][0].endswith("step_12_ancestral_len40_exact.txt")  # the length and cache in the name
  with pytest.raises(UserError, match="--length=42 must be a whole number of blocks"):
    modes.main(config, tmp_path / "whole", "sample", reference=reference(), length=42)
  config.sampler.kv_cache = "none"
  with pytest.raises(UserError, match="add --config.sampler.kv_cache=exact"):
    modes.main(config, tmp_path / "whole", "sample", reference=reference(), length=40)


def test_other_objectives_draw_the_trained_length_only(corpus_file, tmp_path):
  with pytest.raises(UserError, match="--length=40: objective='md4' generates the trained length only"):
    modes.main(make_config(corpus_file), tmp_path / "run", "sample", reference=reference(), length=40)


@pytest.mark.slow
@pytest.mark.parametrize("name, scan_layers, positions", [("ancestral", False, "rope"), ("exact", True, "learned"),
                                                          ("confidence", True, "rope"), ("parallel", False, "rope"),
                                                          ("remdm", False, "rope")])
def test_the_exact_kv_cache_draws_what_the_uncached_sampler_draws(name, scan_layers, positions):
  length, block_size = 12, 4
  network = random_network(length, positions=positions, scan_layers=scan_layers, network_only=True)
  config = make_config("unused.txt", objective="bd3", diffusion__bd3__block_size=block_size, data__seq_len=length)
  objective = BlockDiffusion(config, NETWORK_V)
  z = jnp.full((6, length), NETWORK_V, jnp.int32).at[:, :2].set(jnp.asarray([[1, 3]]))  # a prompt in block 0
  drawn = {}
  for kv_cache in ("none", "exact"):
    settings = sampler_settings(name, steps=9, kv_cache=kv_cache)
    drawn[kv_cache] = jax.jit(lambda key, z: objective.sample(models.Network(network), key, z, settings,
                                                              time_dependent=False, module=network))(
        jax.random.key(7), z)
  for uncached, cached in zip(drawn["none"], drawn["exact"]):
    np.testing.assert_array_equal(uncached, cached)
  assert np.all(np.asarray(drawn["exact"][0]) < NETWORK_V) and np.all(np.asarray(drawn["exact"][0])[:, :2] == [1, 3])


@pytest.mark.parametrize("name", ["ancestral", "exact"])
def test_a_long_sample_drawn_segment_by_segment_is_the_whole_calls_draw(name):
  """--mode sample --length N > data.seq_len draws data.seq_len tokens per call (generate.write_samples), with
  the cache and the clock carried over: the same tokens, order and network calls as one call over all N."""
  trained, size, length = 8, 2, 22  # the last segment is shorter: 8 + 8 + 6
  network = random_network(trained, network_only=True)
  config = make_config("unused.txt", objective="bd3", diffusion__bd3__block_size=size, data__seq_len=trained)
  objective = BlockDiffusion(config, NETWORK_V)
  settings = sampler_settings(name, steps=8, kv_cache="exact")
  z = jnp.full((3, length), NETWORK_V, jnp.int32).at[:, :3].set(jnp.asarray([[1, 3, 2]]))
  key, denoise = jax.random.key(4), models.Network(network)
  whole = objective.sample(denoise, key, z, settings, time_dependent=False, module=network)
  cache, clock, nfe, tokens, order = network.empty_cache(3), 0, 0, [], []
  for begin in range(0, length, trained):
    segment = z[:, begin:begin + trained]
    tokens_BxS, segment_nfe, order_BxS, cache = objective.sample_segment(
        denoise, key, segment, settings, module=network, first_block=begin // size, cache=cache,
        total_length=length, clock=clock)
    tokens.append(tokens_BxS)
    order.append(order_BxS)
    nfe, clock = nfe + int(segment_nfe), max(clock, int(jnp.max(order_BxS)))
  np.testing.assert_array_equal(np.concatenate(tokens, 1), whole[0])
  np.testing.assert_array_equal(np.concatenate(order, 1), whole[2])
  assert nfe == int(whole[1]) and np.all(np.asarray(whole[0]) < NETWORK_V)


def test_a_length_past_the_positions_a_sample_can_have_is_refused():
  config = make_config("unused.txt", objective="bd3", diffusion__bd3__block_size=4, sampler__kv_cache="exact")
  with pytest.raises(UserError, match=r"--length=2147483648 is past the largest position .* \(2\*\*31 - 1 tokens\)"):
    BlockDiffusion.check_sample_length(config, 2**31)


def test_the_sliding_cache_shows_each_block_the_window_it_was_trained_on():
  """Past the training length, block b attends to the blocks in the cache's other slots (cache_slot): the
  trained_length / block_size - 1 before it. With one layer its states are then those of the block-causal pass
  over the training-length window that ends with b (RoPE sees only relative positions). With more layers the
  cached keys of the window's first blocks saw blocks before the window, as in any sliding-window cache."""
  trained, size = 8, 2
  network = random_network(trained, network_only=True, num_layers=1)
  x_BxN = jax.random.randint(jax.random.key(0), (2, 3 * trained), 0, NETWORK_V)
  cache = network.empty_cache(2)
  for index in range(3 * trained // size):
    slot_start, sees_S = cache_slot(index, size, trained)
    positions_C = index * size + jnp.arange(size)
    h_BxCxD, kv = network.extend(x_BxN[:, index * size:(index + 1) * size], positions_C, cache, sees_S)
    cache = write_cache(cache, kv, slot_start)
    first = max(index + 1 - trained // size, 0) * size
    window_BxL = x_BxN[:, first:(index + 1) * size]
    want = network.features(window_BxL, None, mask=Mask("block_causal", size))[:, -size:]
    np.testing.assert_allclose(h_BxCxD, want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("ending_rows, stop_at_end", [((0, 1, 2), True), ((0, 1), True), ((0, 1, 2), False)])
def test_a_row_stops_at_the_block_holding_end_of_text(ending_rows, stop_at_end):
  """Blocks of 2 over 8 positions; the denoiser writes end-of-text (id 4) into block 1 of `ending_rows` and 0
  elsewhere. When every row has ended the call stops there (half the network calls) and the rest is end-of-text;
  while a row has not, every block is drawn, as with stop_at_end=False."""
  config = make_config("unused.txt", objective="bd3", diffusion__bd3__block_size=2, data__seq_len=8)
  objective = BlockDiffusion(config, 5)

  def denoise(z_BxL, t_B, mask):
    del t_B, mask
    logits_BxLxV = jnp.full((*z_BxL.shape, 5), -30.0).at[..., 0].set(30.0)
    ends_BxL = jnp.isin(jnp.arange(z_BxL.shape[0]), jnp.asarray(ending_rows))[:, None] & (jnp.arange(8) // 2 == 1)
    return jnp.where(ends_BxL[..., None], jnp.full_like(logits_BxLxV, -30.0).at[..., 4].set(30.0), logits_BxLxV)

  settings = dataclasses.replace(sampler_settings("ancestral", steps=8), end_id=4, stop_at_end=stop_at_end)
  tokens, nfe, _ = jax.jit(lambda key, z: objective.sample(denoise, key, z, settings, time_dependent=False,
                                                           module=None))(jax.random.key(0), jnp.full((3, 8), 5))
  tokens = np.asarray(tokens)
  everyone_ended = stop_at_end and len(ending_rows) == 3
  for row in range(3):
    expected = [0, 0, *([4, 4] if row in ending_rows else [0, 0]), *([4] * 4 if everyone_ended else [0] * 4)]
    assert tokens[row].tolist() == expected
  assert int(nfe) == (4 if everyone_ended else 8)  # two calls a block
