"""Samplers with per-token schedules (GenMD4) against the exact time-dependent denoiser of a Markov chain."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4_jax import samplers
from md4_jax.core import per_token
from md4_jax.core.schedules import get_schedule
from md4_jax.objectives import genmd4
from tests.conftest import sampler_settings
from tests.samplers import test_samplers as test_sampling

V, L = 4, 4
MASK = V
INITIAL = np.array([0.4, 0.3, 0.2, 0.1])
TRANSITION = np.array([[0.7, 0.1, 0.1, 0.1], [0.2, 0.5, 0.2, 0.1], [0.1, 0.1, 0.2, 0.6], [0.3, 0.3, 0.3, 0.1]])
SEQUENCES = np.array(list(itertools.product(range(V), repeat=L)))  # [V^L, L]
TRUE_PROBS = INITIAL[SEQUENCES[:, 0]] * np.prod(TRANSITION[SEQUENCES[:, :-1], SEQUENCES[:, 1:]], axis=1)
SCHEDULE = per_token.TokenPoly(jnp.array([0.5, 1.0, 2.0, 4.0]))  # very different per-token schedules
SETTINGS = sampler_settings


def true_denoiser(z_BxL, t_B):
  """log p(x0_n | z_t) under the per-token forward process: p(x0 | z_t) is proportional to
  p(x0) * prod over masked n of m_{x0_n}(t), over the sequences x0 consistent with z_t."""
  sequences = jnp.asarray(SEQUENCES)
  masked_BxL = z_BxL == MASK
  consistent_BxS = jnp.all(masked_BxL[:, None] | (z_BxL[:, None] == sequences[None]), axis=-1)
  log_m_BxV = jnp.log(SCHEDULE.mask_prob(t_B))
  log_m_BxSxL = jnp.take_along_axis(log_m_BxV[:, None, :], sequences[None], axis=-1)
  log_w_BxS = jnp.log(jnp.asarray(TRUE_PROBS, jnp.float32)) + jnp.sum(jnp.where(masked_BxL[:, None], log_m_BxSxL, 0), -1)
  w_BxS = jnp.where(consistent_BxS, jnp.exp(log_w_BxS - jnp.max(log_w_BxS, -1, keepdims=True)), 0.0)
  probs_BxLxV = jnp.einsum("bs,slv->blv", w_BxS, jax.nn.one_hot(sequences, V)) / jnp.sum(w_BxS, -1)[:, None, None]
  return jnp.log(probs_BxLxV + 1e-30)


def chi_square_p_value(samples_NxL) -> float:
  return test_sampling.chi_square_p_value(samples_NxL, TRUE_PROBS, V)


@functools.lru_cache(maxsize=None)
def jitted_sampler(settings, schedule="per_token", denoise=true_denoiser, time_dependent=True):
  per_token_schedule = schedule == "per_token"
  schedule = SCHEDULE if per_token_schedule else get_schedule(schedule)
  table = genmd4.SAMPLERS if per_token_schedule else samplers.SAMPLERS  # GenMD4's exact: thinning
  return jax.jit(lambda key, z: samplers.sample(denoise, key, schedule, z, settings, vocab_size=V,
                                                time_dependent=time_dependent, samplers=table))


def all_masked(batch_size):
  return jnp.full((batch_size, L), MASK, jnp.int32)


def test_the_denoiser_is_the_true_conditional():
  rng = np.random.default_rng(0)
  z = np.where(rng.random((10, L)) < 0.6, MASK, rng.integers(0, V, (10, L)))
  t = rng.uniform(0.05, 1.0, 10)
  got = np.exp(np.asarray(true_denoiser(jnp.asarray(z), jnp.asarray(t, jnp.float32))))
  m = np.asarray(SCHEDULE.mask_prob(jnp.asarray(t, jnp.float32)))  # [B, V]
  for row, probs, m_row in zip(z, got, m):
    masked = row == MASK
    consistent = np.all(masked | (SEQUENCES == row), axis=1)
    weights = TRUE_PROBS * consistent * np.prod(np.where(masked, m_row[SEQUENCES], 1.0), axis=1)
    for n in np.flatnonzero(masked):
      want = np.bincount(SEQUENCES[:, n], weights=weights, minlength=V) / weights.sum()
      np.testing.assert_allclose(probs[n], want, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("settings", [SETTINGS("exact"), SETTINGS("ancestral", steps=500),
                                      SETTINGS("mean", steps=500)], ids=["exact", "ancestral_T500", "mean_T500"])
def test_samples_follow_the_true_distribution(settings):
  tokens, nfe = jitted_sampler(settings)(jax.random.key(0), all_masked(5000))
  assert np.all(np.asarray(tokens) < V)
  assert chi_square_p_value(tokens) > 1e-3


@pytest.mark.parametrize("settings, schedule", [(SETTINGS("ancestral", steps=1), "per_token"),
                                                (SETTINGS("exact"), "poly2")],
                         ids=["one_step", "md4_schedule"])
def test_the_goodness_of_fit_test_rejects_a_wrong_sampler(settings, schedule):
  # One step loses the dependence; one shared schedule (MD4's sampler) unmasks tokens at the wrong times.
  tokens, _ = jitted_sampler(settings, schedule)(jax.random.key(0), all_masked(5000))
  assert chi_square_p_value(tokens) < 1e-6


def fixed_denoiser(z_BxL, t_B):
  del t_B
  return jnp.broadcast_to(jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4])), z_BxL.shape + (V,))


def test_a_time_independent_network_is_called_once_per_event():
  sampler = jitted_sampler(SETTINGS("exact"), denoise=fixed_denoiser, time_dependent=False)
  tokens, nfe = sampler(jax.random.key(1), all_masked(64))
  assert int(nfe) == L and np.all(np.asarray(tokens) < V)  # rejections reuse the output: one call per event
  _, nfe_k2 = jitted_sampler(SETTINGS("exact", tokens_per_call=2), denoise=fixed_denoiser, time_dependent=False)(
      jax.random.key(1), all_masked(64))
  assert int(nfe_k2) == L // 2


CLAMPED = np.array([[2, 3, MASK, MASK], [MASK, MASK, 0, 1], [MASK, 1, MASK, 3], [MASK] * L])


@pytest.mark.parametrize("settings", [
    SETTINGS("ancestral", steps=8), SETTINGS("mean", steps=8), SETTINGS("exact"), SETTINGS("exact", tokens_per_call=2),
    SETTINGS("confidence", steps=4), SETTINGS("semi_ar", steps=4, block_length=2, inner="exact")],
    ids=lambda s: f"{s.name}-{s.inner}-{s.tokens_per_call}")
def test_no_mask_survives_and_clamped_tokens_never_change(settings):
  tokens, nfe = jitted_sampler(settings)(jax.random.key(4), jnp.asarray(CLAMPED))
  tokens = np.asarray(tokens)
  assert np.all((tokens >= 0) & (tokens < V))
  np.testing.assert_array_equal(tokens[CLAMPED != MASK], CLAMPED[CLAMPED != MASK])
  assert int(nfe) >= 1
