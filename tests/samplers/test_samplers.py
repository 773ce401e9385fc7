"""Samplers against analytic denoisers: exact distributions, clamps, caching, NFE, float32 exactness."""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from md4_jax import samplers
from md4_jax.core.schedules import get_schedule
from tests.conftest import sampler_settings

# A Markov chain over 4 symbols, length 6: its true conditionals are the perfect denoiser.
V, L = 4, 6
MASK = V
INITIAL = np.array([0.4, 0.3, 0.2, 0.1])
TRANSITION = np.array([[0.7, 0.1, 0.1, 0.1], [0.2, 0.5, 0.2, 0.1], [0.1, 0.1, 0.2, 0.6], [0.3, 0.3, 0.3, 0.1]])
POWERS = np.stack([np.linalg.matrix_power(TRANSITION, k) for k in range(L + 1)])  # [L + 1, V, V]
MARGINALS = np.stack([INITIAL @ POWERS[n] for n in range(L)])  # [L, V]: p(x_n)
SETTINGS = sampler_settings


def markov_denoiser(z_BxL, t_B):
  """log p(x_n | the unmasked tokens of z) for every n: only the nearest unmasked neighbours matter."""
  del t_B
  observed_BxL = z_BxL != MASK
  index_L = jnp.arange(L)
  left_BxL = jax.lax.cummax(jnp.where(observed_BxL, index_L, -1), axis=1)
  left_BxL = jnp.concatenate([jnp.full_like(left_BxL[:, :1], -1), left_BxL[:, :-1]], axis=1)
  right_BxL = jax.lax.cummin(jnp.where(observed_BxL, index_L, L), axis=1, reverse=True)
  right_BxL = jnp.concatenate([right_BxL[:, 1:], jnp.full_like(right_BxL[:, :1], L)], axis=1)
  z_clipped = jnp.minimum(z_BxL, V - 1)
  left_token = jnp.take_along_axis(z_clipped, jnp.maximum(left_BxL, 0), axis=1)
  right_token = jnp.take_along_axis(z_clipped, jnp.minimum(right_BxL, L - 1), axis=1)
  powers = jnp.asarray(POWERS)
  from_left_BxLxV = jnp.where((left_BxL < 0)[..., None], jnp.asarray(MARGINALS)[None],
                              powers[jnp.clip(index_L - left_BxL, 0, L), left_token])
  to_right_BxLxV = jnp.where((right_BxL >= L)[..., None], 1.0,
                             powers[jnp.clip(right_BxL - index_L, 0, L), :, right_token])
  return jnp.log(from_left_BxLxV * to_right_BxLxV + 1e-30)


SEQUENCES = np.array(list(itertools.product(range(V), repeat=L)))  # [V^L, L]
TRUE_PROBS = INITIAL[SEQUENCES[:, 0]] * np.prod(TRANSITION[SEQUENCES[:, :-1], SEQUENCES[:, 1:]], axis=1)


def chi_square_p_value(samples_NxL, true_probs=TRUE_PROBS, vocab_size=V) -> float:
  """Goodness of fit of sequences to the chain whose sequence probabilities (in itertools.product order)
  are `true_probs`; cells expecting < 5 draws are pooled."""
  length = np.shape(samples_NxL)[1]
  index = np.asarray(samples_NxL) @ (vocab_size ** np.arange(length - 1, -1, -1))
  observed = np.bincount(index, minlength=vocab_size**length).astype(float)
  expected = true_probs * len(index)
  small = expected < 5
  if small.any():
    observed = np.append(observed[~small], observed[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
  return stats.chisquare(observed, expected).pvalue


@functools.lru_cache(maxsize=None)
def jitted_sampler(settings, denoise=markov_denoiser, vocab_size=V, schedule="linear", time_dependent=False):
  return jax.jit(lambda key, z: samplers.sample(denoise, key, get_schedule(schedule), z, settings,
                                                vocab_size=vocab_size, time_dependent=time_dependent))


def all_masked(batch_size, length=L, vocab_size=V):
  return jnp.full((batch_size, length), vocab_size, jnp.int32)


def test_markov_denoiser_is_the_true_conditional():
  rng = np.random.default_rng(0)
  z = np.where(rng.random((20, L)) < 0.5, MASK, rng.integers(0, V, (20, L)))
  got = np.exp(np.asarray(markov_denoiser(jnp.asarray(z), None)))
  for row, probs in zip(z, got):
    consistent = np.all((row == MASK) | (SEQUENCES == row), axis=1)
    weights = TRUE_PROBS * consistent
    for n in np.flatnonzero(row == MASK):
      want = np.bincount(SEQUENCES[:, n], weights=weights, minlength=V) / weights.sum()
      np.testing.assert_allclose(probs[n] / probs[n].sum(), want, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("settings", [SETTINGS("ancestral", steps=500), SETTINGS("mean", steps=500),
                                      SETTINGS("exact")], ids=["ancestral_T500", "mean_T500", "exact"])
def test_samples_follow_the_true_distribution(settings):
  tokens, nfe = jitted_sampler(settings)(jax.random.key(0), all_masked(5000))
  assert chi_square_p_value(tokens) > 1e-3
  if settings.name == "exact":
    assert int(nfe) == L


def test_the_goodness_of_fit_test_rejects_a_wrong_sampler():
  # One ancestral step draws every position independently from its marginal: dependence is lost.
  tokens, _ = jitted_sampler(SETTINGS("ancestral", steps=1))(jax.random.key(0), all_masked(5000))
  assert chi_square_p_value(tokens) < 1e-6


def time_revealing_denoiser(z_BxL, t_B):
  """Token 0 when called at t > 0.5, token 1 otherwise: samples show when each position was drawn."""
  return jnp.broadcast_to(jnp.where(t_B[:, None, None] > 0.5, jnp.array([30.0, 0, 0, 0]),
                                    jnp.array([0, 30.0, 0, 0])), z_BxL.shape + (V,))


@pytest.mark.parametrize("settings", [SETTINGS("exact"), SETTINGS("ancestral", steps=200, grid="uniform")],
                         ids=["exact", "ancestral"])
def test_tokens_are_drawn_at_their_unmasking_time(settings):
  schedule = get_schedule("cosine")
  sampler = jitted_sampler(settings, time_revealing_denoiser, schedule="cosine", time_dependent=True)
  tokens, _ = sampler(jax.random.key(1), all_masked(4000))
  # Each position unmasks at tau with P(tau > 0.5) = 1 - (1 - alpha_0.5) / (1 - alpha_1).
  want = 1 - float(schedule.mask_prob(0.5) / schedule.mask_prob(1.0))
  got = float(np.mean(np.asarray(tokens) == 0))
  assert abs(got - want) < 5 * np.sqrt(want * (1 - want) / tokens.size)


@pytest.mark.parametrize("name", ["ancestral", "mean"])
def test_token_frequencies_match_the_model_at_many_steps(name):
  # At 4,000 steps a token's share of one (vocabulary + stay masked) draw is ~1e-6 to 1e-4.
  probs = np.array([0.6, 0.25, 0.1, 0.04, 0.01])
  denoise = lambda z, t: jnp.broadcast_to(jnp.log(jnp.asarray(probs)), z.shape + (5,))  # noqa: E731
  tokens, _ = jitted_sampler(SETTINGS(name, steps=4000, grid="uniform"), denoise, vocab_size=5)(
      jax.random.key(2), all_masked(128, length=16, vocab_size=5))
  freq = np.bincount(np.asarray(tokens).ravel(), minlength=5) / tokens.size
  assert np.all(np.abs(freq - probs) < 5 * np.sqrt(probs * (1 - probs) / tokens.size)), freq


def test_uniform_has_resolution_near_zero():
  u = np.asarray(samplers.uniform(jax.random.key(3), (2**21,)))
  assert np.all((u > 0) & (u < 1))
  small = u[u < 2.0**-10]
  assert abs(len(small) - 2**11) < 5 * np.sqrt(2**11)
  assert np.any((small * 2.0**23) % 1 != 0)  # not on jax.random.uniform's 2^-23 grid


CLAMPED = np.array([[2, 3, MASK, MASK, MASK, MASK],  # prompt
                    [MASK, MASK, MASK, MASK, 0, 1],  # suffix
                    [MASK, 1, MASK, MASK, 3, MASK],  # spans
                    [MASK] * L])


@pytest.mark.parametrize("settings", [
    SETTINGS("ancestral", steps=8), SETTINGS("mean", steps=8), SETTINGS("exact"), SETTINGS("exact", tokens_per_call=2),
    SETTINGS("confidence", steps=4), SETTINGS("semi_ar", steps=4, block_length=3, inner="confidence"),
    SETTINGS("semi_ar", steps=2, block_length=3, inner="exact"), SETTINGS("parallel", block_length=2),
    SETTINGS("parallel", threshold=1e-3)], ids=lambda s: f"{s.name}-{s.inner}-{s.threshold}")
def test_no_mask_survives_and_clamped_tokens_never_change(settings):
  tokens, nfe = jitted_sampler(settings)(jax.random.key(4), jnp.asarray(CLAMPED))
  tokens = np.asarray(tokens)
  assert np.all((tokens >= 0) & (tokens < V))
  np.testing.assert_array_equal(tokens[CLAMPED != MASK], CLAMPED[CLAMPED != MASK])
  assert int(nfe) >= 1


@pytest.mark.parametrize("k, want", [(1, L), (2, 3), (4, 2)])
def test_exact_calls_the_network_once_per_k_tokens(k, want):
  _, nfe = jitted_sampler(SETTINGS("exact", tokens_per_call=k))(jax.random.key(5), all_masked(3))
  assert int(nfe) == want
  # Clamped rows: the row with the most free positions (6) sets the count.
  _, nfe = jitted_sampler(SETTINGS("exact", tokens_per_call=k))(jax.random.key(5), jnp.asarray(CLAMPED[:3]))
  assert int(nfe) == -(-4 // k)


@pytest.mark.parametrize("name", ["ancestral", "mean", "confidence"])
def test_caching_skips_calls_and_changes_no_sample(name):
  cached, cached_nfe = jitted_sampler(SETTINGS(name, steps=64))(jax.random.key(6), all_masked(2))
  plain, plain_nfe = jitted_sampler(SETTINGS(name, steps=64, cache=False))(jax.random.key(6), all_masked(2))
  np.testing.assert_array_equal(cached, plain)
  assert int(plain_nfe) == 64 and int(cached_nfe) < 64
  # A time-conditioned network is called at every step.
  _, nfe = jitted_sampler(SETTINGS(name, steps=64), time_dependent=True)(jax.random.key(6), all_masked(2))
  assert int(nfe) == 64


def counting_denoiser(z_BxL, t_B):
  """Predicts token c = (number of unmasked positions) everywhere, more confidently at later positions."""
  del t_B
  count_B = jnp.sum(z_BxL != 8, axis=1)
  return jax.nn.one_hot(count_B, 8)[:, None, :] * (1.0 + jnp.arange(L))[None, :, None]


def test_confidence_unmasks_the_most_confident_first():
  settings = SETTINGS("confidence", steps=L, grid="uniform", temperature=0.0, choice_temperature=0.0)
  tokens, nfe = jitted_sampler(settings, counting_denoiser, vocab_size=8)(jax.random.key(7), all_masked(2, L, 8))
  # One position per step, the rightmost (most confident) first: it saw 0 unmasked, the next 1, ...
  np.testing.assert_array_equal(tokens, [[5, 4, 3, 2, 1, 0]] * 2)
  assert int(nfe) == L


def test_semi_ar_fills_blocks_left_to_right():
  settings = SETTINGS("semi_ar", steps=L, grid="uniform", temperature=0.0, choice_temperature=0.0,
                      block_length=3, inner="confidence")
  tokens, _ = jitted_sampler(settings, counting_denoiser, vocab_size=8)(jax.random.key(8), all_masked(1, L, 8))
  np.testing.assert_array_equal(tokens, [[2, 1, 0, 5, 4, 3]])


def test_semi_ar_rejects_blocks_that_do_not_tile_the_sequence():
  with pytest.raises(ValueError, match="block_length=4 must divide the sequence length 6"):
    samplers.sample(markov_denoiser, jax.random.key(0), get_schedule("linear"), all_masked(1),
                    SETTINGS("semi_ar", block_length=4), vocab_size=V)


def test_process_logits_temperature_top_k_top_p():
  probs = jnp.array([0.5, 0.3, 0.15, 0.05])
  logits = jnp.log(probs)[None, None]
  exp = lambda s: np.exp(np.asarray(samplers.process_logits(logits, s))[0, 0])  # noqa: E731
  np.testing.assert_allclose(exp(SETTINGS()), probs, rtol=1e-6)
  np.testing.assert_allclose(exp(SETTINGS(temperature=2.0)), np.sqrt(probs) / np.sqrt(probs).sum(), rtol=1e-6)
  np.testing.assert_array_equal(exp(SETTINGS(temperature=0.0)), [1, 0, 0, 0])
  np.testing.assert_allclose(exp(SETTINGS(top_k=2)), [0.625, 0.375, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(exp(SETTINGS(top_p=0.7)), [0.625, 0.375, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(exp(SETTINGS(top_p=0.81)), [0.5, 0.3, 0.15, 0] / np.float32(0.95), rtol=1e-6)
  np.testing.assert_array_equal(exp(SETTINGS(top_p=0.5)), [1, 0, 0, 0])


def test_time_grids():
  np.testing.assert_allclose(samplers.time_grid(4, "uniform"), [0, 0.25, 0.5, 0.75, 1.0])
  cosine = np.asarray(samplers.time_grid(4, "cosine"))
  assert cosine[0] == 0 and cosine[-1] == 1 and np.all(np.diff(cosine) > 0)
  assert cosine[-1] - cosine[-2] < 0.25  # fewer tokens unmask early


@pytest.mark.parametrize("name", ["linear", "cosine", "poly3", "geometric"])
def test_time_of_mask_prob_inverts_the_schedule(name):
  schedule = get_schedule(name)
  t = jnp.linspace(0.01, 0.99, 7)
  inverted = samplers.exact.time_of_mask_prob(schedule, schedule.mask_prob(t))
  np.testing.assert_allclose(schedule.mask_prob(inverted), schedule.mask_prob(t), rtol=1e-5)


def test_settings_come_from_the_config_alone():
  """configs/base.py is the one place the sampler's defaults live: Settings has none of its own (end_id, not a
  key, is the Experiment's: the tokenizer's end-of-text)."""
  from configs import base
  config = base.get_config()
  settings = samplers.settings(config.sampler)
  values = {key: value for key, value in config.sampler.items() if key not in samplers.GROUPS}
  for group in samplers.GROUPS:  # the built-in samplers' own groups become fields
    values.update(config.sampler[group])
  assert all(getattr(settings, field.name) == values[field.name] for field in dataclasses.fields(settings)
             if field.name not in ("options", "end_id")) and settings.options == () and settings.end_id == -1
  with pytest.raises(TypeError):
    samplers.Settings()
