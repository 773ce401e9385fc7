"""ReMDM (sampler.name='remdm') against the exact law of its Markov chain, enumerated here from the paper's
kernel; its reduction to the ancestral sampler; its refusals."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from md4_jax import samplers
from md4_jax.core import per_token
from md4_jax.core.schedules import get_schedule
from md4_jax.errors import UserError
from md4_jax.objectives import genmd4
from md4_jax.samplers import remdm
from tests.conftest import sampler_settings
from tests.samplers import test_samplers

# A strongly dependent law over 3 positions of 3 tokens: samplers that unmask positions together lose the
# dependence, so each strategy's law differs visibly from the ancestral sampler's at few steps.
V, L = 3, 3
MASK = V
SEQUENCES = np.array(list(itertools.product(range(V), repeat=L)))  # [V^L, L]
PROBS = np.where(np.all(SEQUENCES == SEQUENCES[:, :1], axis=1), 10.0, 0.2) + np.arange(len(SEQUENCES)) * 0.05
PROBS = PROBS / PROBS.sum()
STATES = np.array(list(itertools.product(range(V + 1), repeat=L)))  # [(V + 1)^L, L]: every z, mask = V
PER_TOKEN = per_token.TokenPoly(jnp.array([0.5, 1.0, 3.0]))
SCHEDULES = {"linear": get_schedule("linear"), "per_token": PER_TOKEN}


def conditional_denoiser(z_BxL, t_B):
  """log p(x_n | the unmasked tokens of z) under PROBS, for every position (time-independent)."""
  del t_B
  consistent_BxS = jnp.all((z_BxL[:, None] == MASK) | (z_BxL[:, None] == jnp.asarray(SEQUENCES)[None]), -1)
  w_BxS = jnp.where(consistent_BxS, jnp.asarray(PROBS, jnp.float32), 0.0)
  probs_BxLxV = jnp.einsum("bs,slv->blv", w_BxS, jax.nn.one_hot(SEQUENCES, V)) / w_BxS.sum(-1)[:, None, None]
  return jnp.log(probs_BxLxV + 1e-30)


def paper_sigma(strategy, eta, alpha_t_V, alpha_s_V, in_loop):
  """sigma_t as the paper defines each strategy; sigma_max = min(1, (1 - alpha_s) / alpha_t)."""
  sigma_max = np.minimum(1.0, (1.0 - alpha_s_V) / alpha_t_V)
  if strategy == "rescale":
    return eta * sigma_max
  if strategy == "loop" and not in_loop:
    return np.zeros_like(sigma_max)
  return np.minimum(eta, sigma_max)


def kernel(probs_SxLxV, alpha_t_V, alpha_s_V, sigma_V):
  """[S, S] transition matrix over STATES of one ReMDM step (each position independently given z_t):
  decoded w -> mask with sigma_w; mask -> v with p_v (alpha_s,v - (1 - sigma_v) alpha_t,v) / (1 - alpha_t,v)."""
  unmask_V = np.clip((alpha_s_V - (1.0 - sigma_V) * alpha_t_V) / (1.0 - alpha_t_V), 0.0, 1.0)
  matrix = np.ones((len(STATES), len(STATES)))
  for n in range(L):
    step_SxV1 = np.zeros((len(STATES), V + 1))  # position n's next symbol given each state
    masked = STATES[:, n] == MASK
    step_SxV1[masked, :V] = probs_SxLxV[masked, n] * unmask_V
    step_SxV1[masked, V] = 1.0 - step_SxV1[masked, :V].sum(-1)
    decoded = np.flatnonzero(~masked)
    step_SxV1[decoded, STATES[decoded, n]] = 1.0 - sigma_V[STATES[decoded, n]]
    step_SxV1[decoded, V] = sigma_V[STATES[decoded, n]]
    matrix *= step_SxV1[:, STATES[:, n]]
  return matrix


def exact_law(settings, schedule):
  """The law of the sampler's output over SEQUENCES: its chain enumerated over every state, step by step."""
  probs_SxLxV = np.exp(np.asarray(conditional_denoiser(jnp.asarray(STATES), None), np.float64))
  probs_SxLxV /= probs_SxLxV.sum(-1, keepdims=True)  # float32 sums are 1 to ~1e-7
  times = np.asarray(remdm._times(settings, schedule), np.float64)
  alpha = lambda t: np.broadcast_to(np.asarray(schedule.alpha(jnp.float32(t)), np.float64), (V,))  # noqa: E731
  law_S = np.all(STATES == MASK, axis=1).astype(float)
  for i in range(settings.steps):
    t, s = times[settings.steps - i], times[settings.steps - i - 1]
    alpha_t_V, alpha_s_V = alpha(t), (np.ones(V) if s == 0 else alpha(s))
    u_t, u_s = 1 - i / settings.steps, 1 - (i + 1) / settings.steps
    in_loop = u_t <= settings.t_on + 1e-9 and u_s >= settings.t_off - 1e-9
    sigma_V = paper_sigma(settings.strategy, settings.eta, alpha_t_V, alpha_s_V, in_loop)
    law_S = law_S @ kernel(probs_SxLxV, alpha_t_V, alpha_s_V, sigma_V)
  done = np.all(STATES < MASK, axis=1)
  assert abs(law_S[done].sum() - 1) < 1e-9  # the last step fills every position
  return law_S[done]  # STATES without the mask symbol are SEQUENCES, in the same order


@functools.lru_cache(maxsize=None)
def jitted(settings, schedule_name):
  table = genmd4.SAMPLERS if schedule_name == "per_token" else samplers.SAMPLERS
  return jax.jit(lambda key, z: samplers.sample(conditional_denoiser, key, SCHEDULES[schedule_name], z, settings,
                                                vocab_size=V, time_dependent=False, samplers=table))


STRATEGIES = {"cap": dict(strategy="cap", eta=0.3), "rescale": dict(strategy="rescale", eta=0.8),
              "loop": dict(strategy="loop", eta=0.5, t_on=0.75, t_off=0.25, alpha_on=0.5)}


@pytest.mark.parametrize("schedule_name", ["linear", "per_token"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_draws_follow_the_enumerated_law_of_the_chain(strategy, schedule_name):
  settings = sampler_settings("remdm", steps=8, **STRATEGIES[strategy])
  law = exact_law(settings, SCHEDULES[schedule_name])
  tokens, nfe = jitted(settings, schedule_name)(jax.random.key(0), jnp.full((20000, L), MASK, jnp.int32))
  assert test_samplers.chi_square_p_value(tokens, law, V) > 1e-3
  assert int(nfe) <= 8
  # The test can fail: ancestral's law (sigma = 0 on the same walk) is rejected against it.
  ancestral = exact_law(sampler_settings("remdm", steps=8, **{**STRATEGIES[strategy], "eta": 0.0}),
                        SCHEDULES[schedule_name])
  assert np.abs(ancestral - law).sum() > 0.05
  assert test_samplers.chi_square_p_value(tokens, ancestral, V) < 1e-6


@pytest.mark.parametrize("schedule_name", ["linear", "per_token"])
@pytest.mark.parametrize("strategy", ["cap", "rescale"])
def test_eta_zero_is_the_ancestral_sampler_draw_for_draw(strategy, schedule_name):
  z = jnp.full((64, L), MASK, jnp.int32).at[:5, 1].set(2)  # some clamped tokens
  got, nfe = jitted(sampler_settings("remdm", steps=6, strategy=strategy, eta=0.0), schedule_name)(
      jax.random.key(3), z)
  want, want_nfe = jitted(sampler_settings("ancestral", steps=6), schedule_name)(jax.random.key(3), z)
  np.testing.assert_array_equal(got, want)
  assert int(nfe) == int(want_nfe)


def test_the_loop_walks_alpha_up_holds_it_and_finishes():
  settings = sampler_settings("remdm", steps=20, strategy="loop", eta=0.02, t_on=0.55, t_off=0.05, alpha_on=0.9)
  u = np.linspace(0, 1, 21)
  want = np.where(u >= 0.55, 0.9 * (1 - u) / 0.45, np.where(u <= 0.05, 1 - 0.1 * u / 0.05, 0.9))
  np.testing.assert_allclose(remdm.loop_alphas(settings), want, atol=1e-6)
  linear = get_schedule("linear")
  times = remdm._times(settings, linear)
  np.testing.assert_allclose(linear.alpha(times)[1:-1], want[1:-1], atol=1e-5)  # the network's time has that alpha
  assert times[0] == 0 and times[-1] == 1 and np.all(np.diff(times) >= 0)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_position_is_filled_and_clamped_tokens_never_change(strategy):
  z = jnp.full((200, L), MASK, jnp.int32).at[:, 0].set(1)
  tokens, _ = jitted(sampler_settings("remdm", steps=8, **STRATEGIES[strategy]), "linear")(jax.random.key(5), z)
  assert np.all(np.asarray(tokens) < V) and np.all(np.asarray(tokens)[:, 0] == 1)


def test_semi_ar_runs_it_block_by_block():
  settings = sampler_settings("semi_ar", steps=9, block_length=1, inner="remdm", **STRATEGIES["cap"])
  tokens, _ = jitted(settings, "linear")(jax.random.key(6), jnp.full((20000, L), MASK, jnp.int32))
  # One position at a time from its exact conditional: the data law itself.
  assert test_samplers.chi_square_p_value(tokens, PROBS, V) > 1e-3


@pytest.mark.parametrize("changes, message", [
    (dict(strategy="max"), "sampler.remdm.strategy='max'"),
    (dict(eta=-0.1), "sampler.remdm.eta=-0.1 must be >= 0"),
    (dict(strategy="rescale", eta=1.5), "must be <= 1 for strategy='rescale'"),
    (dict(t_on=0.1, t_off=0.2), "need 0 <= t_off < t_on < 1"),
    (dict(t_on=1.0), "need 0 <= t_off < t_on < 1"),
    (dict(alpha_on=1.0), "sampler.remdm.alpha_on=1.0 must be in (0, 1)"),
    (dict(eta=0.2), "exceeds (1 - alpha_on) / alpha_on = 0.1111"),
])
def test_bad_keys_are_refused(changes, message):
  config = base.get_config()
  config.sampler.name = "remdm"
  config.sampler.remdm.strategy = "loop"
  config.sampler.remdm.update(changes)
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
    samplers.check_config(config, 16)
