"""The eval estimator against the exact negative ELBO, computed by brute force on a tiny model and length.

With L = 3 and V = 3 every mask pattern can be enumerated: the continuous-time bound is then a
one-dimensional integral over t (composite Gauss-Legendre, fine enough for the 1000 t time features)
and the T-step bound a finite sum. The estimator (eval.time_samples draws of t per sequence) must agree
within its own sampling error.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from md4_jax.data import modality
from md4_jax.engine import sharding
from md4_jax.engine.experiment import Experiment
from tests import tiny_config

V, L = 3, 3
X0 = np.random.default_rng(0).integers(0, V, (48, L)).astype(np.int32)
MASKS = np.array(list(itertools.product([False, True], repeat=L)))  # [8, L]: every mask pattern


def experiment(**eval_overrides) -> Experiment:
  config = tiny_config.get_config()
  config.data.seq_len = L
  config.model.transformer.width = 16
  config.eval.batch_size = len(X0)
  config.eval.update(eval_overrides)
  return Experiment(config, modality.Text(V, L), sharding.make_mesh(config.mesh))


@pytest.fixture(scope="module")
def params():
  """Random weights everywhere (the zero-initialised head and time modulation too): predictions depend
  on z and t."""
  exp = experiment()
  state = exp.init_state(exp.base_key)
  leaves, treedef = jax.tree.flatten(state["params"])
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(treedef, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def expected_cross_entropy(exp, params, t_Q):
  """[Q, B]: E over masks z ~ q(z | x0, t) of the cross-entropy at the masked positions, by enumeration."""
  model = nnx.merge(exp.graphdef, params)
  z_QxBxMxL = np.broadcast_to(np.where(MASKS[None], V, X0[:, None]), (len(t_Q),) + (len(X0),) + MASKS.shape)
  t_flat = np.repeat(t_Q, len(X0) * len(MASKS)).astype(np.float32)
  log_probs = jax.nn.log_softmax(model(jnp.asarray(z_QxBxMxL.reshape(-1, L)), jnp.asarray(t_flat)), axis=-1)
  log_probs = np.asarray(log_probs).reshape(z_QxBxMxL.shape + (V,))
  true_log_prob = np.take_along_axis(log_probs, np.broadcast_to(X0[None, :, None, :, None],
                                                                z_QxBxMxL.shape + (1,)), axis=-1)[..., 0]
  cross_entropy_QxBxM = -np.sum(np.where(MASKS, true_log_prob, 0.0), axis=-1)
  masked = MASKS.sum(-1)
  mask_prob = np.asarray(exp.objective.schedule.mask_prob(t_Q), np.float64)[:, None]
  p_QxM = mask_prob**masked * (1 - mask_prob) ** (L - masked)
  return np.einsum("qbm,qm->qb", cross_entropy_QxBxM, p_QxM)


def exact_bound(exp, params, timesteps: int) -> float:
  """Mean over X0's rows of the negative ELBO, in nats per sequence."""
  schedule = exp.objective.schedule
  if timesteps == 0:
    nodes, weights = np.polynomial.legendre.leggauss(8)
    edges = np.linspace(0.0, 1.0, 401)
    t_Q = ((edges[:-1, None] + edges[1:, None]) / 2 + np.diff(edges)[:, None] / 2 * nodes[None]).ravel()
    w_Q = (np.diff(edges)[:, None] / 2 * weights[None]).ravel()
    diffusion = np.einsum("q,qb->b", w_Q * -np.asarray(schedule.weight(t_Q), np.float64),
                          expected_cross_entropy(exp, params, t_Q))
  else:
    t_Q = np.arange(1, timesteps + 1) / timesteps
    s_Q = t_Q - 1.0 / timesteps
    coef = np.asarray((schedule.alpha(s_Q) - schedule.alpha(t_Q)) / schedule.mask_prob(t_Q), np.float64)
    diffusion = np.einsum("q,qb->b", coef, expected_cross_entropy(exp, params, t_Q))
  ends = L * (float(schedule.mask_prob(0.0)) + float(schedule.alpha(1.0))) * np.log(V)
  return float(np.mean(diffusion + ends))


@pytest.mark.slow
@pytest.mark.parametrize("timesteps, draws", [(0, 64), (4, 16)], ids=["continuous", "T4"])
def test_estimator_matches_the_exact_bound(params, timesteps, draws):
  exp = experiment(time_samples=draws, timesteps=timesteps)
  batch = sharding.global_batch({"tokens": X0, "token_mask": np.ones_like(X0)}, exp.mesh)
  estimates = []
  for repeat in range(64):
    sums = jax.device_get(exp.eval_step(params, batch, jax.random.key(repeat)))
    estimates.append(float(sums["loss_sum"]) / float(sums["num_sequences"]))
  exact = exact_bound(exp, params, timesteps)
  error = np.std(estimates) / np.sqrt(len(estimates))
  assert 0 < error < 0.005 * exact  # sharp enough to see a 2% error in the diffusion term
  assert abs(np.mean(estimates) - exact) < 4 * error, (np.mean(estimates), exact, error)


def test_more_time_samples_shrink_the_spread(params):
  spreads = []
  for draws in (1, 16):
    exp = experiment(time_samples=draws, timesteps=0)
    batch = sharding.global_batch({"tokens": X0, "token_mask": np.ones_like(X0)}, exp.mesh)
    values = [float(exp.eval_step(params, batch, jax.random.key(r))["loss_sum"]) for r in range(16)]
    spreads.append(np.std(values))
  assert spreads[1] < spreads[0] / 2
