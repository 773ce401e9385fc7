"""GenMD4's math: per-token polynomial schedules and the state-dependent negative ELBO, as pure jnp.

Token v is masked by time t with probability m_v(t) = 1 - alpha_{t,v} = (1 - 2 eps) t^{w_v} + eps
(the `polyK` convention of schedules.py, so with every w_v = k this is exactly MD4 with polyk).
The reverse process unmasks a position to v at rate mu_v r_v(t), r_v = -alpha'_{t,v} / (1 - alpha_{t,v}),
mu = p_theta(. | z_t). Per masked position with true token x the continuous-time integrand is

  sum_v r_v mu_v - r_x (1 + log mu_x) = r_x (-log mu_x) + sum_v (r_v - r_x) mu_v      (>= 0)

which is MD4's -w(t) * cross-entropy when all r_v are equal (the second sum is then exactly 0).
Times are u in [0, 1) mapped to t = t_min + (1 - t_min) u (the integral over [t_min, 1]); the
reconstruction term at t_min predicts a masked token by its posterior under a uniform prior,
p(v | masked at t_min) proportional to m_v(t_min). docs/genmd4.md has the derivations.
"""

import dataclasses

import jax
import jax.numpy as jnp

from md4_jax.core.schedules import EPS


def _power(t, w):
  """t ** w for t >= 0 with finite gradients in w at t = 0 (where it is 0)."""
  positive = t > 0
  return jnp.where(positive, jnp.exp(w * jnp.log(jnp.where(positive, t, 1.0))), 0.0)


@dataclasses.dataclass(frozen=True)
class TokenPoly:
  """Per-token schedules m_v(t) = (1 - 2 eps) t^{w_v} + eps. Methods take t of any shape [...] and
  return [..., V]."""

  powers: jax.Array  # [V] w_v > 0

  def mask_prob(self, t):
    return (1.0 - 2.0 * EPS) * _power(jnp.asarray(t)[..., None], self.powers) + EPS

  def alpha(self, t):
    # Written out rather than 1 - mask_prob, which loses alpha_1 = eps to cancellation in float32.
    return (1.0 - 2.0 * EPS) * (1.0 - _power(jnp.asarray(t)[..., None], self.powers)) + EPS

  def rate(self, t):
    """r_v(t) = -alpha'_{t,v} / (1 - alpha_{t,v}) = (1 - 2 eps) w t^{w - 1} / m_v(t); 0 at t = 0 (a point
    of measure zero, where the rate is infinite for w < 1), so every term stays finite there."""
    t = jnp.asarray(t)
    positive = t > 0
    safe_t = jnp.where(positive, t, 1.0)
    rate = (1.0 - 2.0 * EPS) * self.powers * _power(safe_t[..., None], self.powers - 1.0) / self.mask_prob(safe_t)
    return jnp.where(positive[..., None], rate, 0.0)

  def max_rate_times_t(self):
    """A bound c with r_v(t) <= c / t for every v and t (since m_v(t) >= (1 - 2 eps) t^{w_v})."""
    return jnp.max(self.powers)

  def mean_mask_prob(self, t):
    """The vocabulary's mean mask probability: the unmasking count of count-based samplers (confidence)."""
    return jnp.mean(self.mask_prob(t), axis=-1)


def mask_tokens(key, x0_BxL, mask_prob_BxL, mask_id: int, token_mask_BxL):
  """z_t: token n replaced by `mask_id` with its own probability (padding never masked)."""
  masked_BxL = (jax.random.uniform(key, x0_BxL.shape) < mask_prob_BxL) & token_mask_BxL.astype(bool)
  return jnp.where(masked_BxL, mask_id, x0_BxL)


def token_values(values_BxV, x0_BxL):
  """values[b, x0[b, n]] for every position: a per-example table read at each position's token."""
  return jnp.take_along_axis(values_BxV, x0_BxL, axis=1)


def integrand(logits_NxV, x0_N, rate_NxV):
  """Continuous-time loss of masked positions: r_x (-log mu_x) + sum_v (r_v - r_x) mu_v, float32."""
  log_mu = jax.nn.log_softmax(logits_NxV.astype(jnp.float32), axis=-1)
  log_mu_x = jnp.take_along_axis(log_mu, x0_N[..., None], axis=-1)[..., 0]
  rate_x = jnp.take_along_axis(rate_NxV, x0_N[..., None], axis=-1)[..., 0]
  return -rate_x * log_mu_x + jnp.sum((rate_NxV - rate_x[..., None]) * jnp.exp(log_mu), axis=-1)


def step_kl(logits_NxV, x0_N, keep_NxV):
  """T-step bound of a masked position, KL(q(z_s | z_t = m, x0) || p(z_s | z_t = m)), float32.

  keep_v = m_v(s) / m_v(t) (stays masked from t to s); q unmasks to x w.p. a_x = 1 - keep_x, p to v
  w.p. mu_v a_v and stays masked w.p. sum_v mu_v keep_v. With equal keep_v this is a (-log mu_x).
  """
  log_mu = jax.nn.log_softmax(logits_NxV.astype(jnp.float32), axis=-1)
  log_mu_x = jnp.take_along_axis(log_mu, x0_N[..., None], axis=-1)[..., 0]
  keep_x = jnp.take_along_axis(keep_NxV, x0_N[..., None], axis=-1)[..., 0]
  log_stay_ratio = jax.nn.logsumexp(log_mu + jnp.log(keep_NxV / keep_x[..., None]), axis=-1)
  return -(1.0 - keep_x) * log_mu_x - keep_x * log_stay_ratio


def log_q(z_BxL, x0_BxL, mask_prob_BxL, mask_id: int, token_mask_BxL):
  """log q(z_t | x0) per example: sum over real tokens of log m_x (masked) or log(1 - m_x) (kept)."""
  log_each = jnp.where(z_BxL == mask_id, jnp.log(mask_prob_BxL), jnp.log1p(-mask_prob_BxL))
  return jnp.sum(jnp.where(token_mask_BxL.astype(bool), log_each, 0.0), axis=-1)


def reconstruction(schedule: TokenPoly, x0_BxL, token_mask_BxL, t_min: float):
  """E[-log p(x0 | z_{t_min})] with masked tokens predicted by p(v) proportional to m_v(t_min), per example."""
  mask_prob_V = schedule.mask_prob(jnp.float32(t_min))
  log_posterior_V = jnp.log(mask_prob_V) - jnp.log(jnp.sum(mask_prob_V))
  per_token_BxL = mask_prob_V[x0_BxL] * -log_posterior_V[x0_BxL]
  return jnp.sum(per_token_BxL * token_mask_BxL, axis=-1)


def prior(schedule: TokenPoly, x0_BxL, token_mask_BxL, vocab_size: int):
  """KL(q(z_1 | x0) || p(z_1)), p(z_1) = masked w.p. 1 - alpha_1, else uniform over V; per example.

  alpha_{1,v} = eps for every v (1^w = 1), so this is MD4's num_tokens * alpha_1 * log V.
  """
  alpha_1 = schedule.alpha(jnp.float32(1.0))[x0_BxL]
  return jnp.sum(alpha_1 * jnp.log(float(vocab_size)) * token_mask_BxL, axis=-1)


def rloo(loss_1_B, loss_2_B, log_q_1_B, log_q_2_B):
  """Leave-one-out REINFORCE term for the schedule: 0.5 sg(l1 - l2) (log q(z1|x0) - log q(z2|x0))."""
  return 0.5 * jax.lax.stop_gradient(loss_1_B - loss_2_B) * (log_q_1_B - log_q_2_B)
