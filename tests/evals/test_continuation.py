"""The harness's scores (evals/continuation.py, Objective.conditional_loss): windows that score every token once,
AR's exact log-likelihood, and MD4's / BD3's Monte Carlo estimate against the exact conditional bound enumerated
on a tiny vocabulary and length."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from md4_jax import models
from md4_jax.core import ar_likelihood, block_diffusion, per_token
from md4_jax.core.fused_head import token_nll
from md4_jax.core.schedules import get_schedule
from md4_jax.data.modality import Text
from md4_jax.engine import sharding
from md4_jax.engine.experiment import Experiment
from md4_jax.evals import continuation
from md4_jax.objectives.md4 import MD4
from md4_jax.samplers import exact
from tests.conftest import make_config

V = 5


@pytest.mark.parametrize("context, continuation_length, length", [(5, 3, 8), (0, 20, 8), (12, 9, 8), (2, 8, 8)])
def test_windows_score_every_continuation_token_once_with_the_most_context(context, continuation_length, length):
  tokens = np.arange(context + continuation_length) % 7
  rows = continuation.windows([(tokens[:context], tokens[context:])], length)
  positions = []
  for row, scored, unknown in zip(rows.tokens_NxL, rows.scored_NxL, rows.unknown_NxL):
    known = ~unknown
    end = context + sum(len(p) for p in positions) + scored.sum()
    first = end - known.sum()
    np.testing.assert_array_equal(row[known], tokens[first:end])  # the tokens before, as many as fit
    assert known.sum() == min(length, end) and not unknown[:known.sum()].any()
    positions.append(np.flatnonzero(scored) + first)
  np.testing.assert_array_equal(np.concatenate(positions), np.arange(context, context + continuation_length))


def scorer(objective_name: str, draws: int = 8, **overrides):
  """(a continuation.Scorer, its module): the tiny config's time-independent transformer at vocabulary V and
  length 6, every weight random (the zero-initialised output layer too)."""
  config = make_config("unused.txt", objective=objective_name, data__seq_len=6,
                       **{"model__time_conditioning": False, "diffusion__bd3__block_size": 2, **overrides})
  experiment = Experiment(config, Text(V, 6), sharding.make_mesh(config.mesh))
  leaves, treedef = jax.tree.flatten(experiment.init_state(experiment.base_key)["params"])
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(treedef, [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  return (continuation.Scorer(experiment, params, draws=draws, batch_size=4),
          nnx.merge(experiment.graphdef, params))


def test_ar_scores_are_the_exact_next_token_log_likelihood():
  ours, module = scorer("ar")
  requests = [(np.asarray([1, 2]), np.asarray([3, 0, 4])), (np.asarray([], np.int32), np.asarray([2, 2])),
              (np.asarray([4]), np.asarray([1, 0, 3, 2, 1, 0, 4, 4]))]  # the last needs two windows
  scores = ours.score(requests)
  for (context, text), score in zip(requests, scores):
    tokens = np.concatenate([context, text])
    nll, logits = 0.0, None
    for end in range(len(context), len(tokens)):  # each token from the (at most 6) before it
      window = tokens[max(0, end - 5):end + 1]
      logits = ar_likelihood.next_token_logits(module, jnp.asarray(window[None]), V)
      nll += float(token_nll(logits, jnp.asarray(window[None]))[0, -1])
    if len(tokens) <= 6:
      np.testing.assert_allclose(score.nats, nll, rtol=1e-5)
    assert score.stderr == 0.0
  assert np.isfinite(scores[2].nats)


def exact_conditional_bound(objective, module, tokens, scored, unknown, schedule):
  """E over t and the masks of the bound on the scored tokens (unknown positions masked throughout), by enumerating
  every subset of them masked and integrating over t with Gauss-Legendre (for the linear schedule the integrand is
  a polynomial in t)."""
  scored_positions = np.flatnonzero(scored)
  nodes, weights = np.polynomial.legendre.leggauss(32)
  t_Q, w_Q = (nodes + 1) / 2, weights / 2
  net = models.Network(module)
  total = 0.0
  for count in range(1, len(scored_positions) + 1):
    for subset in itertools.combinations(scored_positions, count):
      masked = np.zeros_like(scored)
      masked[list(subset)] = True
      z = jnp.where(jnp.asarray(masked | unknown), V, jnp.asarray(tokens))[None]
      nll = float(jnp.sum(jnp.where(masked, token_nll(objective.network(net)(z, jnp.ones(1)), tokens[None])[0], 0.0)))
      m_Q = np.asarray(schedule.mask_prob(jnp.asarray(t_Q)))
      weight_Q = np.asarray(-schedule.weight(jnp.asarray(t_Q)))
      probability_Q = m_Q ** count * (1 - m_Q) ** (len(scored_positions) - count)
      total += nll * float(np.sum(w_Q * weight_Q * probability_Q))
  n, log_v = len(scored_positions), np.log(V)
  return total + n * float(schedule.mask_prob(0.0)) * log_v + n * float(schedule.alpha(1.0)) * log_v


@pytest.mark.parametrize("shift", [False, True])
def test_md4_scores_estimate_the_exact_conditional_bound(shift):
  ours, module = scorer("md4", draws=1024, diffusion__shift=shift)
  context, text = np.asarray([1, 3]), np.asarray([0, 4, 2])
  score = ours.score([(context, text)])[0]
  tokens = np.concatenate([context, text, [0]])  # the window's last position is unknown (a mask id)
  scored = np.asarray([False, False, True, True, True, False])
  unknown = np.asarray([False] * 5 + [True])
  exact = exact_conditional_bound(MD4(ours.experiment.config, V), module, tokens, scored, unknown,
                                  get_schedule("linear"))
  assert score.stderr > 0 and abs(score.nats - exact) < 3 * score.stderr, (score, exact)
  # The estimate is of this bound, not another: the other reading of the network (shifted or not) is far from it.
  other_config = ours.experiment.config.copy_and_resolve_references()
  other_config.diffusion.shift = not shift
  other = exact_conditional_bound(MD4(other_config, V), module, tokens, scored, unknown, get_schedule("linear"))
  assert abs(score.nats - other) > 3 * score.stderr, (score, other)


def test_genmd4_scores_estimate_the_exact_conditional_bound():
  """Per-token schedules (random learned powers): every subset of the scored tokens masked with probability
  prod m_x(t) prod (1 - m_x(t)), the integrand summed over it, integrated over [t_min, 1] in log t (smooth there);
  plus the scored tokens' reconstruction and prior terms."""
  ours, module = scorer("genmd4", draws=1024)
  objective = ours.experiment.objective
  context, text = np.asarray([1, 3]), np.asarray([0, 4, 2])
  score = ours.score([(context, text)])[0]
  tokens = np.concatenate([context, text, [0]])
  scored, unknown = np.asarray([False, False, True, True, True, False]), np.asarray([False] * 5 + [True])
  schedule, net = objective.schedule(module), objective.network(models.Network(module))
  assert np.ptp(np.asarray(schedule.powers)) > 0.1  # the tokens' schedules differ
  nodes, weights = np.polynomial.legendre.leggauss(64)
  log_low = np.log(objective.t_min)
  t_Q = np.exp(log_low / 2 * (1 - nodes))
  w_Q = weights * (-log_low / 2) * t_Q  # dt = t d(log t)
  rate_QxV, m_QxV = np.asarray(schedule.rate(jnp.asarray(t_Q))), np.asarray(schedule.mask_prob(jnp.asarray(t_Q)))
  positions = np.flatnonzero(scored)
  exact = 0.0
  for masked_flags in itertools.product([False, True], repeat=len(positions)):
    masked = np.zeros_like(scored)
    masked[positions[list(masked_flags)]] = True
    if not masked.any():
      continue
    z = jnp.where(jnp.asarray(masked | unknown), V, jnp.asarray(tokens))[None]
    logits = np.asarray(net(z, jnp.ones(1)))[0]  # time-independent
    m_QxN = m_QxV[:, tokens[positions]]
    probability_Q = np.prod(np.where(np.asarray(masked_flags), m_QxN, 1 - m_QxN), axis=1)
    integrand_Q = sum(np.asarray(per_token.integrand(jnp.asarray(logits[n])[None], jnp.asarray(tokens[n])[None],
                                                     jnp.asarray(rate_QxV)))
                      for n in np.flatnonzero(masked))
    exact += float(np.sum(w_Q * probability_Q * integrand_Q))
  x0, scored_1xL = jnp.asarray(tokens)[None], jnp.asarray(scored)[None]
  exact += float(per_token.reconstruction(schedule, x0, scored_1xL, objective.t_min)[0]
                 + per_token.prior(schedule, x0, scored_1xL, V)[0])
  assert score.stderr > 0 and abs(score.nats - exact) < 3 * score.stderr, (score, exact)


def test_bd3_scores_are_the_block_bound_on_the_continuation():
  """Blocks of 2, a continuation that starts mid-block: the estimate is within 3 standard errors of the exact
  bound, whose blocks are scored given the clean blocks before them (enumerated per block)."""
  ours, module = scorer("bd3", draws=256)
  context, text = np.asarray([1]), np.asarray([3, 0])  # block 0 = [1 | 3], block 1 = [0 | unknown]
  score = ours.score([(context, text)])[0]
  net = models.Network(module)
  schedule = get_schedule("linear")
  nodes, weights = np.polynomial.legendre.leggauss(32)
  t_Q, w_Q = (nodes + 1) / 2, weights / 2
  m_Q, weight_Q = np.asarray(schedule.mask_prob(jnp.asarray(t_Q))), np.asarray(-schedule.weight(jnp.asarray(t_Q)))
  x0 = jnp.asarray([[1, 3, 0, 0, 0, 0]])
  exact = 0.0
  for position in (1, 2):  # one scored token per block: masked with probability m, weight w
    z = jnp.where(jnp.arange(6) >= 3, V, x0).at[0, position].set(V)
    nll = float(block_diffusion.token_nll_in_layout(net, z, x0, 2)[0, position])
    exact += nll * float(np.sum(w_Q * weight_Q * m_Q))
  exact += 2 * float(schedule.mask_prob(0.0)) * np.log(V) + 2 * float(schedule.alpha(1.0)) * np.log(V)
  assert abs(score.nats - exact) < 3 * score.stderr, (score, exact)


@pytest.mark.parametrize("objective_name", ["md4", "genmd4"])
def test_greedy_is_the_one_call_argmax(objective_name):
  """One call at the time whose (mean) mask rate is the masked share, 4 of 6 (GenMD4: its learned schedule's)."""
  ours, module = scorer(objective_name, model__time_conditioning=True)
  context = np.asarray([1, 3])
  z = jnp.asarray([[1, 3, V, V, V, V]])
  share = jnp.full((1,), 4 / 6)
  t = share if objective_name == "md4" else exact.time_of_mask_prob(ours.experiment.objective.schedule(module), share)
  best = np.asarray(jnp.argmax(module(z, t), axis=-1))[0]
  assert ours.score([(context, best[2:5])])[0].greedy
  wrong = best[2:5].copy()
  wrong[1] = (wrong[1] + 1) % V
  assert not ours.score([(context, wrong)])[0].greedy
