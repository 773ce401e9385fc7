"""MD4's forward process and negative ELBO (MATH.md), as pure jnp functions.

No Flax and no config here: the network enters only as a callable
`denoise(z_BxL, t_B) -> logits_BxLxV` and the schedule as an object from
`schedules.get_schedule`. Every loss is in nats per example.
"""

import jax
import jax.numpy as jnp


def sample_times(key, batch_size: int, antithetic: bool = True):
  """t_B in [0, 1). Antithetic: t_b = (u + b / B) mod 1, one u for the batch (unbiased, lower variance)."""
  if antithetic:
    u = jax.random.uniform(key, ())
    return jnp.mod(u + jnp.arange(batch_size) / batch_size, 1.0)
  return jax.random.uniform(key, (batch_size,))


def discretize_times(t_B, timesteps: int):
  """Maps t in [0, 1) to the grid {1/T, ..., 1}, uniform over the T steps."""
  step_B = jnp.floor(t_B * timesteps) + 1.0
  return jnp.minimum(step_B, timesteps) / timesteps


def mask_tokens(key, x0_BxL, mask_prob_B, mask_id: int, token_mask_BxL=None):
  """z_t: each token independently replaced by `mask_id` with probability 1 - alpha_t.

  Padding (token_mask == 0) is never masked, so it never enters the loss.
  """
  masked_BxL = jax.random.uniform(key, x0_BxL.shape) < mask_prob_B[:, None]
  if token_mask_BxL is not None:
    masked_BxL &= token_mask_BxL.astype(bool)
  return jnp.where(masked_BxL, mask_id, x0_BxL)


def masked_cross_entropy(logits_BxLxV, x0_BxL, z_BxL, mask_id: int):
  """sum over masked positions of -log p(x0 | z_t), per example, in float32."""
  log_probs_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  nll_BxL = -jnp.take_along_axis(log_probs_BxLxV, x0_BxL[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(z_BxL == mask_id, nll_BxL, 0.0), axis=-1)


def elbo_terms(denoise, x0_BxL, key, schedule, *, vocab_size: int, timesteps: int = 0,
               antithetic: bool = True, token_mask_BxL=None):
  """One-sample estimate of the negative ELBO terms, per example, in nats.

  Args:
    denoise: `denoise(z_BxL, t_B) -> logits_BxLxV` over the V real tokens.
    x0_BxL: clean tokens in [0, V).
    key: PRNG key; split here into time and mask draws.
    schedule: a `schedules.Schedule`.
    vocab_size: V; the mask token is V.
    timesteps: 0 for the continuous-time bound, T > 0 for the T-step discrete bound.
    antithetic: low-discrepancy times across the batch.
    token_mask_BxL: 1 for real tokens, 0 for padding (excluded everywhere).

  Returns:
    dict of [B] arrays: `diffusion`, `reconstruction`, `prior`, `loss` (their sum),
    and `num_tokens` (real tokens per example, for per-token units).
  """
  batch_size = x0_BxL.shape[0]
  if token_mask_BxL is None:
    token_mask_BxL = jnp.ones_like(x0_BxL)
  num_tokens_B = jnp.sum(token_mask_BxL, axis=-1).astype(jnp.float32)
  time_key, mask_key = jax.random.split(key)
  t_B = sample_times(time_key, batch_size, antithetic)
  if timesteps:
    t_B = discretize_times(t_B, timesteps)
  mask_prob_B = schedule.mask_prob(t_B)
  z_BxL = mask_tokens(mask_key, x0_BxL, mask_prob_B, vocab_size, token_mask_BxL)
  cross_entropy_B = masked_cross_entropy(denoise(z_BxL, t_B), x0_BxL, z_BxL, vocab_size)
  if timesteps:
    s_B = t_B - 1.0 / timesteps
    # T * E_i[(alpha_s - alpha_t) / (1 - alpha_t) * CE]: i drawn uniformly from T steps.
    coef_B = timesteps * (schedule.alpha(s_B) - schedule.alpha(t_B)) / mask_prob_B
  else:
    coef_B = -schedule.weight(t_B)
  log_v = jnp.log(float(vocab_size))
  terms = {
      "diffusion": coef_B * cross_entropy_B,
      # Tokens already masked at t=0 are predicted uniformly.
      "reconstruction": num_tokens_B * schedule.mask_prob(jnp.zeros(())) * log_v,
      # KL(q(z_1 | x0) || p(z_1)) with p(z_1) = mask w.p. 1 - alpha_1, else uniform over V.
      "prior": num_tokens_B * schedule.alpha(jnp.ones(())) * log_v,
  }
  terms["loss"] = terms["diffusion"] + terms["reconstruction"] + terms["prior"]
  terms["num_tokens"] = num_tokens_B
  return terms
