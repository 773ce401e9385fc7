"""GenMD4's bound and gradients against exact values: MD4 with equal powers, enumeration of every z_t."""

import itertools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs import base
from md4_jax.core import per_token
from md4_jax.core.schedules import EPS
from md4_jax.objectives.genmd4 import GenMD4
from md4_jax.objectives.md4 import MD4

V, L = 5, 4


def config_with(**genmd4_keys):
  config = base.get_config()
  config.diffusion.antithetic = False
  config.diffusion.genmd4.update(genmd4_keys)
  return config


class FixedNet:
  """A fixed denoiser (logits from a table over (position, input id)) with learned powers softplus(theta)."""

  splits_head = False  # the objectives' network protocol (models.Network): full logits only

  def __init__(self, theta, table_LxV1xV):
    self.module = types.SimpleNamespace(schedule=lambda: jax.nn.softplus(theta))
    self.table = table_LxV1xV

  def __call__(self, z_BxL, t_B):
    del t_B
    return self.table[jnp.arange(z_BxL.shape[1]), z_BxL]


TABLE = jax.random.normal(jax.random.key(3), (L, V + 1, V)) * 1.5


def batch(size=6, seed=0):
  rng = np.random.default_rng(seed)
  x0 = jnp.asarray(rng.integers(0, V, (size, L)), jnp.int32)
  token_mask = jnp.ones_like(x0).at[0, -1].set(0)  # one padding token
  return x0, token_mask


@pytest.mark.parametrize("power", [1.0, 2.5])
@pytest.mark.parametrize("t_min", [0.0, 1e-3])
@pytest.mark.parametrize("timesteps", [0, 16])
def test_equal_powers_give_md4_with_polyk_on_the_same_z(power, t_min, timesteps):
  x0, token_mask = batch()
  u_B = jnp.linspace(0.05, 0.95, x0.shape[0])
  key = jax.random.key(7)
  theta = jnp.full((V,), np.log(np.expm1(power)), jnp.float32)
  got = GenMD4(config_with(t_min=t_min, initial_power=power), V).terms(
      FixedNet(theta, TABLE), x0, key, token_mask_BxL=token_mask, timesteps=timesteps, t_B=u_B)
  md4_config = base.get_config()
  md4_config.diffusion.schedule = f"poly{power}"
  # MD4 integrates over [0, 1]; GenMD4 over [t_min, 1] (u -> t_min + (1 - t_min) u) with the
  # reconstruction term at t_min. The T-step bound uses the grid over [0, 1] for both.
  t_B = u_B if timesteps else t_min + (1.0 - t_min) * u_B
  want = MD4(md4_config, V).terms(FixedNet(theta, TABLE), x0, key, token_mask_BxL=token_mask,
                                  timesteps=timesteps, t_B=t_B)
  scale = 1.0 if timesteps else 1.0 - t_min
  np.testing.assert_allclose(got["diffusion"], scale * want["diffusion"], rtol=2e-5)
  assert np.count_nonzero(want["diffusion"]) >= 4  # most rows have masked positions
  np.testing.assert_allclose(got["prior"], want["prior"], rtol=1e-6)
  recon_time = 0.0 if timesteps else t_min
  mask_prob = (1 - 2 * EPS) * recon_time**power + EPS
  np.testing.assert_allclose(got["reconstruction"], token_mask.sum(-1) * mask_prob * np.log(V), rtol=1e-5)
  if recon_time == 0.0:
    np.testing.assert_allclose(got["reconstruction"], want["reconstruction"], rtol=1e-6)


def test_the_integrand_is_nonnegative_and_zero_only_for_a_perfect_prediction():
  key_logits, key_rates, key_x = jax.random.split(jax.random.key(0), 3)
  logits = 3 * jax.random.normal(key_logits, (200, V))
  rates = jnp.exp(jax.random.normal(key_rates, (200, V)))
  x0 = jax.random.randint(key_x, (200,), 0, V)
  assert float(jnp.min(per_token.integrand(logits, x0, rates))) > 0
  perfect = 50.0 * jax.nn.one_hot(x0, V)
  np.testing.assert_allclose(per_token.integrand(perfect, x0, rates), 0.0, atol=1e-6)


# ---- The expected bound by enumeration (numpy, float64), for the gradient tests. ----

T_MIN = 1e-3
MASKS = np.array(list(itertools.product([False, True], repeat=L)))  # [2^L, L]
NODES, WEIGHTS = np.polynomial.legendre.leggauss(200)


def expected_bound(theta, x0, token_mask):
  """E_t E_z [bound] summed over the examples, every z_t enumerated; the t integral by Gauss-Legendre in log t."""
  w = np.log1p(np.exp(np.asarray(theta, np.float64)))
  table = np.asarray(TABLE, np.float64)
  t_N = np.exp(np.log(T_MIN) * (1 - NODES) / 2)[:, None]  # nodes on [log t_min, 0], dt = t dy
  weight_N = -np.log(T_MIN) / 2 * WEIGHTS * t_N[:, 0]
  m_NxV = (1 - 2 * EPS) * t_N**w + EPS
  r_NxV = (1 - 2 * EPS) * w * t_N ** (w - 1) / m_NxV
  total = 0.0
  for row, real in zip(np.asarray(x0), np.asarray(token_mask).astype(bool)):
    for mask in MASKS:
      if np.any(mask & ~real):
        continue  # padding is never masked
      q_N = np.prod(np.where(mask, m_NxV[:, row], 1 - m_NxV[:, row])[:, real], axis=1)
      logits = table[np.arange(L), np.where(mask, V, row)]
      log_mu = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
      loss_N = sum(r_NxV[:, row[n]] * -log_mu[n, row[n]] + (r_NxV - r_NxV[:, row[n], None]) @ np.exp(log_mu[n])
                   for n in np.flatnonzero(mask))
      total += np.sum(weight_N * q_N * loss_N)
    m_min = (1 - 2 * EPS) * T_MIN**w + EPS
    total += np.sum((m_min[row] * -np.log(m_min[row] / m_min.sum()))[real]) + real.sum() * EPS * np.log(V)
  return total


def finite_difference_gradient(theta, x0, token_mask, h=1e-5):
  theta = np.asarray(theta, np.float64)
  return np.array([(expected_bound(theta + h * e, x0, token_mask) - expected_bound(theta - h * e, x0, token_mask))
                   / (2 * h) for e in np.eye(V)])


THETA = jnp.asarray(np.log(np.expm1([0.5, 1.0, 2.0, 1.5, 3.0])), jnp.float32)


def test_the_enumerated_bound_matches_the_one_sample_estimate_on_average():
  x0, token_mask = batch()
  objective = GenMD4(config_with(t_min=T_MIN), V)
  estimate = jax.jit(jax.vmap(lambda key: objective.terms(
      FixedNet(THETA, TABLE), x0, key, token_mask_BxL=token_mask, timesteps=0)["loss"].sum()))
  values = np.asarray(estimate(jax.random.split(jax.random.key(1), 20_000)))
  want = expected_bound(THETA, x0, token_mask)
  assert abs(values.mean() - want) < 4 * values.std() / np.sqrt(values.size)


@pytest.mark.parametrize("network_draws", [2, 1])
def test_the_schedule_gradient_matches_finite_differences_of_the_expected_bound(network_draws):
  x0, token_mask = batch()
  objective = GenMD4(config_with(t_min=T_MIN, network_draws=network_draws), V)

  def surrogate(theta, key):
    terms = objective.terms(FixedNet(theta, TABLE), x0, key, token_mask_BxL=token_mask, timesteps=0, training=True)
    return terms["surrogate"].sum()

  grads = np.asarray(jax.jit(jax.vmap(jax.grad(surrogate), in_axes=(None, 0)))(
      THETA, jax.random.split(jax.random.key(2), 40_000)), np.float64)
  want = finite_difference_gradient(THETA, x0, token_mask)
  mean, stderr = grads.mean(0), grads.std(0) / np.sqrt(len(grads))
  threshold = stats.chi2.ppf(1 - 1e-4, V)

  def misfit(target):  # sum of squared z-scores of the V components against `target`
    return float(np.sum(((mean - target) / stderr) ** 2))

  assert misfit(want) < threshold, (mean, want, stderr)
  for wrong in (0.9 * want, 1.1 * want):  # the test has the power to see a 10% error
    assert misfit(wrong) > 4 * threshold, (mean, wrong, stderr)


@pytest.mark.slow
def test_the_score_has_zero_mean_and_the_leave_one_out_term_estimates_the_score_gradient():
  """At fixed (x0, t): sum_z q(z) grad log q(z) = 0 (so the other draw is a valid baseline), and the
  REINFORCE term's mean gradient is E[l(z) grad log q(z)], both by enumeration of every z."""
  x0, token_mask = batch(size=1, seed=3)
  t = jnp.full((1,), 0.4)
  schedule_of = lambda theta: per_token.TokenPoly(jax.nn.softplus(theta))  # noqa: E731
  mask_prob = lambda theta: per_token.token_values(schedule_of(theta).mask_prob(t), x0)  # noqa: E731
  zs = jnp.where(jnp.asarray(MASKS), V, x0)  # [2^L, L]: every z_t of the one example
  log_q = jax.vmap(lambda z, theta: per_token.log_q(z[None], x0, mask_prob(theta), V, jnp.ones_like(x0))[0],
                   in_axes=(0, None))
  q = jnp.exp(log_q(zs, THETA))
  np.testing.assert_allclose(float(q.sum()), 1.0, rtol=1e-5)
  scores = jax.vmap(jax.grad(lambda theta, z: log_q(z[None], theta)[0]), in_axes=(None, 0))(THETA, zs)
  np.testing.assert_allclose(q @ scores, 0.0, atol=1e-6)
  # A loss that depends on z (the fixed network's bound at t), its score-function gradient by enumeration:
  rates = schedule_of(THETA).rate(t)
  loss = lambda z: jnp.sum(jnp.where(z == V, per_token.integrand(TABLE[jnp.arange(L), z], x0[0], rates), 0.0))  # noqa: E731
  losses = jax.vmap(loss)(zs)
  want = (q * losses) @ scores
  assert np.linalg.norm(want) > 0.1
  def rloo_gradient(key):
    k1, k2 = jax.random.split(key)
    z1, z2 = (per_token.mask_tokens(k, x0, mask_prob(THETA), V, jnp.ones_like(x0))[0] for k in (k1, k2))
    return jax.grad(lambda theta: per_token.rloo(loss(z1), loss(z2), log_q(z1[None], theta)[0],
                                              log_q(z2[None], theta)[0]))(THETA)
  grads = np.asarray(jax.jit(jax.vmap(rloo_gradient))(jax.random.split(jax.random.key(5), 100_000)))
  stderr = grads.std(0) / np.sqrt(len(grads))
  np.testing.assert_array_less(np.abs(grads.mean(0) - want), 4 * stderr + 1e-6)


def test_the_schedule_can_have_its_own_learning_rate():
  from md4_jax.engine.experiment import make_optimizer
  config = base.get_config()
  # Vectors only: AdamW's weight decay (matrices) would make the two updates differ for another reason.
  params = {"backbone": {"scale": jnp.ones((3,))}, "schedule": {"theta": jnp.ones((V,))}}
  grads = jax.tree.map(jnp.ones_like, params)
  for peak, ratio in ((0.0, 0.0), (config.train.learning_rate * 3, 3.0)):
    optimizer = make_optimizer(config.train, {"schedule": peak})
    state = optimizer.init(params)
    for _ in range(3):  # past the first step, where the warm-up's learning rate is 0
      updates, state = optimizer.update(grads, state, params)
    assert float(jnp.abs(updates["backbone"]["scale"]).max()) > 0
    np.testing.assert_allclose(updates["schedule"]["theta"], ratio * updates["backbone"]["scale"][0], rtol=1e-5)


@pytest.mark.slow
def test_genmd4_terms_and_gradients_are_finite_at_t_0_and_1_exactly():
  x0 = jax.random.randint(jax.random.key(0), (2, 4000), 0, V)
  table = jax.random.normal(jax.random.key(1), (4000, V + 1, V))
  objective = GenMD4(config_with(t_min=0.0), V)
  theta = jnp.asarray(np.log(np.expm1([0.3, 0.5, 1.0, 2.0, 4.0])), jnp.float32)  # powers below 1 included

  def surrogate(theta):
    return objective.terms(FixedNet(theta, table), x0, jax.random.key(2), token_mask_BxL=jnp.ones_like(x0),
                           timesteps=0, t_B=jnp.array([0.0, 1.0]), training=True)["surrogate"].sum()

  value, grad = jax.value_and_grad(surrogate)(theta)
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
