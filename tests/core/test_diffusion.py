"""Forward masking and the negative ELBO against exact oracles (docs/method.md)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4_jax.core import diffusion, fused_head
from md4_jax.core.schedules import get_schedule
from tests.core.test_fused_head import assert_gradients_close

V = 7  # vocabulary; the mask id is V


def test_masked_fraction_matches_one_minus_alpha():
  schedule = get_schedule("cosine")
  x0 = jnp.zeros((4, 20_000), jnp.int32)
  t = jnp.array([0.1, 0.4, 0.7, 0.95])
  z = diffusion.mask_tokens(jax.random.key(0), x0, schedule.mask_prob(t), V)
  frac = np.asarray(jnp.mean(z == V, axis=1))
  expected = np.asarray(schedule.mask_prob(t))
  sigma = np.sqrt(expected * (1 - expected) / x0.shape[1])
  assert np.all(np.abs(frac - expected) < 5 * sigma)
  # Unmasked tokens carry their value; masked ones are exactly the mask id.
  assert set(np.unique(np.asarray(z)).tolist()) <= {0, V}


def test_padding_is_never_masked():
  x0 = jnp.ones((2, 10), jnp.int32)
  token_mask = jnp.array([[1] * 10, [1] * 4 + [0] * 6])
  z = diffusion.mask_tokens(jax.random.key(1), x0, jnp.array([1.0, 1.0]), V, token_mask)
  np.testing.assert_array_equal(z == V, token_mask.astype(bool))


def test_antithetic_times_are_stratified():
  t = np.sort(np.asarray(diffusion.sample_times(jax.random.key(3), 8, antithetic=True)))
  assert np.all((t >= 0) & (t < 1))
  np.testing.assert_allclose(np.diff(t), 1 / 8, atol=1e-6)


def uniform_denoise(z, t):
  return jnp.zeros(z.shape + (V,))


def mean_loss(denoise, *, timesteps=0, antithetic=True, schedule="linear", n=2000, batch=64, length=16, key=0):
  """Monte Carlo mean and std error of the per-example loss over n batches."""
  x0 = X0[:batch, :length]
  sched = get_schedule(schedule)

  @jax.jit
  def one(k):
    return diffusion.elbo_terms(denoise, x0, k, sched, vocab_size=V, timesteps=timesteps, antithetic=antithetic)

  losses = jax.vmap(lambda k: jnp.mean(one(k)["loss"]))(jax.random.split(jax.random.key(key), n))
  return float(jnp.mean(losses)), float(jnp.std(losses) / math.sqrt(n))


@pytest.mark.parametrize("schedule", ["linear", "cosine", "poly2", "geometric"])
def test_uniform_predictor_costs_D_log_V(schedule):
  # Diffusion term: (alpha_0 - alpha_1) D log V; with reconstruction and prior the total is D log V.
  mean, stderr = mean_loss(uniform_denoise, schedule=schedule, n=300)
  assert abs(mean - 16 * math.log(V)) < 5 * stderr + 1e-3


def test_uniform_predictor_terms_exact():
  sched = get_schedule("linear")
  x0 = jnp.zeros((3, 5), jnp.int32)
  terms = diffusion.elbo_terms(uniform_denoise, x0, jax.random.key(0), sched, vocab_size=V)
  np.testing.assert_allclose(terms["reconstruction"], 5 * float(sched.mask_prob(0.0)) * math.log(V), rtol=1e-5)
  np.testing.assert_allclose(terms["prior"], 5 * float(sched.alpha(1.0)) * math.log(V), rtol=1e-5)
  np.testing.assert_array_equal(terms["num_tokens"], [5, 5, 5])


@pytest.mark.slow
def test_antithetic_and_iid_agree_in_mean():
  # A denoiser that depends on the data so the loss depends on t.
  a_mean, a_err = mean_loss(informative_denoise, antithetic=True, n=1500)
  i_mean, i_err = mean_loss(informative_denoise, antithetic=False, n=1500)
  assert abs(a_mean - i_mean) < 5 * math.hypot(a_err, i_err)
  assert a_err < i_err  # the point of antithetic sampling


X0 = jax.random.randint(jax.random.key(99), (64, 16), 0, V)


def informative_denoise(z, t):
  """More confident in the true tokens the more of them it sees, like a trained model (never perfect)."""
  visible_Bx1x1 = jnp.mean(z < V, axis=-1)[:, None, None]
  return 3.0 * visible_Bx1x1 * jax.nn.one_hot(X0[: z.shape[0], : z.shape[1]], V)


@pytest.mark.slow
def test_discrete_time_approaches_continuous():
  cont, cont_err = mean_loss(informative_denoise, n=1500)
  gaps = []
  for steps in (2, 8, 64):
    disc, disc_err = mean_loss(informative_denoise, timesteps=steps, n=1500, key=steps)
    gaps.append(disc - cont)
    assert disc > cont - 5 * math.hypot(cont_err, disc_err)  # L_T >= L_inf
  # The gap shrinks like 1/T: the continuous bound is the limit (and the tightest).
  assert gaps[0] > gaps[1] > gaps[2] - 5 * cont_err
  assert abs(gaps[2]) < 0.2 * gaps[0]


def test_perfect_predictor_has_zero_diffusion_loss():
  x0 = jax.random.randint(jax.random.key(5), (8, 12), 0, V)
  perfect = lambda z, t: 1e4 * jax.nn.one_hot(x0, V)  # noqa: E731
  for timesteps in (0, 10):
    terms = diffusion.elbo_terms(perfect, x0, jax.random.key(6), get_schedule("linear"), vocab_size=V,
                                 timesteps=timesteps)
    np.testing.assert_allclose(terms["diffusion"], 0.0, atol=1e-6)


def test_padding_is_excluded_from_loss_and_counts():
  x0 = jnp.zeros((2, 10), jnp.int32)
  token_mask = jnp.array([[1] * 10, [1] * 5 + [0] * 5])
  terms = diffusion.elbo_terms(uniform_denoise, x0, jax.random.key(0), get_schedule("linear"), vocab_size=V,
                               token_mask_BxL=token_mask)
  np.testing.assert_array_equal(terms["num_tokens"], [10, 5])
  np.testing.assert_allclose(terms["reconstruction"][1], terms["reconstruction"][0] / 2, rtol=1e-6)


def test_masked_cross_entropy_counts_only_masked_positions():
  x0 = jnp.array([[0, 1, 2]])
  z = jnp.array([[V, 1, V]])
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25] + [0.0] * (V - 3)] * 3]) + 1e-30)
  ce = diffusion.masked_cross_entropy(logits, x0, z, V)
  np.testing.assert_allclose(ce, [-math.log(0.5) - math.log(0.25)], rtol=1e-5)


def test_spread_order_balances_every_block_of_rows():
  for batch in (8, 64, 96, 128):
    order = diffusion.spread_order(batch)
    assert sorted(order.tolist()) == list(range(batch))
    for rows in (8, 16, 32):
      if batch % rows == 0 and batch > rows:
        block_means = order.reshape(-1, rows).mean(axis=1) / batch
        # A contiguous assignment would put block means 0.5 apart; this keeps them within 0.1 of the middle.
        assert np.max(np.abs(block_means - (batch - 1) / (2 * batch))) < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("capacity, groups, expect_fallback", [(40, 1, 0.0), (20, 2, 0.0), (8, 2, 1.0), (None, 1, 0.0)])
@pytest.mark.parametrize("weighted", [False, True], ids=["head_loss", "weighted_nll"])
def test_gathered_output_layer_is_the_same_objective(capacity, groups, expect_fallback, weighted):
  """Applying the output layer only at masked positions changes the cost, never the value or gradient; the
  same with the gradient made in the layer's forward pass (weighted_nll, the per-example weights given)."""
  key_h, key_w, key_x, key_m = jax.random.split(jax.random.key(0), 4)
  h = jax.random.normal(key_h, (4, 16, 8))
  weight = jax.random.normal(key_w, (8, V))
  x0 = jax.random.randint(key_x, (4, 16), 0, V)
  z = jnp.where(jax.random.uniform(key_m, (4, 16)) < 0.5, V, x0)  # ~32 masked of 64; <= 20 per block of 2 rows

  def full(h, weight):
    return jnp.sum(diffusion.masked_cross_entropy(h @ weight, x0, z, V) * jnp.arange(1.0, 5.0))

  def gathered(h, weight):
    head_loss = lambda h_NxD, x0_N, **loss: fused_head.head_loss(h_NxD, weight, x0_N, **loss)  # noqa: E731
    if not weighted:
      nll, fallback, _ = diffusion.masked_head_loss(h, head_loss, x0, z, V, capacity=capacity, groups=groups)
      return jnp.sum(nll * jnp.arange(1.0, 5.0)), fallback
    nll, fallback, total = diffusion.masked_head_loss(
        h, head_loss, x0, z, V, capacity=capacity, groups=groups, weight_B=jnp.arange(1.0, 5.0),
        weighted_nll=lambda h_NxD, x0_N, weight_N: fused_head.weighted_nll(h_NxD, weight, x0_N, weight_N))
    np.testing.assert_allclose(jax.lax.stop_gradient(total), jnp.sum(nll * jnp.arange(1.0, 5.0)), rtol=1e-6)
    return total + jnp.sum(nll), fallback  # nll carries no gradient on this path

  assert int(jnp.sum(z == V)) <= 40 and max(int(jnp.sum(z[:2] == V)), int(jnp.sum(z[2:] == V))) <= 20
  (value, fallback), grads = jax.value_and_grad(gathered, argnums=(0, 1), has_aux=True)(h, weight)
  expected, expected_grads = jax.value_and_grad(full, argnums=(0, 1))(h, weight)
  assert float(fallback) == expect_fallback
  if weighted:  # the value had sum(nll) added, which has no gradient
    expected = expected + jnp.sum(diffusion.masked_cross_entropy(h @ weight, x0, z, V))
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  # Within 1e-5 of each gradient's largest entry: the gathered rows are summed in another order, and XLA's float32
  # sums differ between CPU models (a fixed atol of 1e-6 failed on an AVX2 EPYC by 1.3e-6 on an entry of 2e-3).
  assert_gradients_close(grads, expected_grads, 1e-5)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "poly0.5", "poly2", "geometric"])
def test_terms_and_gradients_are_finite_at_t_0_and_1_exactly(schedule):
  # 4,000 tokens per row: at t = 0 a few are masked (eps = 1e-4), so the term is really evaluated there.
  x0 = jax.random.randint(jax.random.key(0), (2, 4000), 0, V)

  def loss(scale):
    denoise = lambda z, t: scale * jax.nn.one_hot(jnp.minimum(z, V - 1), V)  # noqa: E731
    return diffusion.elbo_terms(denoise, x0, jax.random.key(1), get_schedule(schedule), vocab_size=V,
                                t_B=jnp.array([0.0, 1.0]))["loss"].sum()

  value, grad = jax.value_and_grad(loss)(1.0)
  assert np.isfinite(float(value)) and np.isfinite(float(grad))
