"""Samplers that walk a time grid 1 = t_T > ... > t_0 = 0, one network call per step: ancestral (MD4's
reverse process) and mean (draw x0, then unmask); confidence.py walks it too. Shared and per-token schedules
alike (a per-token schedule's unmasking probability is a vector over the vocabulary)."""

import jax
import jax.numpy as jnp

from md4_jax.samplers.draws import categorical, process_logits, record_order, time_grid, uniform


def grid_times(settings, schedule):
  """The default walk: settings.steps steps on settings.grid."""
  del schedule
  return time_grid(settings.steps, settings.grid)


def grid_sampler(update, times_of=grid_times):
  """A sampler that walks the times 1 = t_T >= ... >= t_0 = 0 of `times_of(settings, schedule)` ([T + 1],
  increasing) with one network call per step, skipped (the last output reused) when caching is allowed and the
  previous step changed nothing. `update(key, z, is_masked, active, logits, t, s, step, settings, schedule)`
  returns the new z (active: the positions this call fills, masked when it started)."""

  def run(denoise, key, schedule, z_BxL, active_BxL, settings, vocab_size, time_dependent, order_BxL):
    steps, batch_size = settings.steps, z_BxL.shape[0]
    times = times_of(settings, schedule)
    reuse_allowed = settings.cache and not time_dependent
    clock_start = jnp.max(order_BxL)  # semi_ar: later blocks continue the clock

    def step(i, carry):
      z_BxL, last_logits, changed, nfe, order_BxL = carry
      t, s = times[steps - i], times[steps - i - 1]
      call = lambda: denoise(z_BxL, jnp.full((batch_size,), t)).astype(jnp.float32)  # noqa: E731
      logits = jax.lax.cond(changed, call, lambda: last_logits) if reuse_allowed else call()
      is_masked_BxL = (z_BxL == vocab_size) & active_BxL
      new_z = update(jax.random.fold_in(key, i), z_BxL, is_masked_BxL, active_BxL, logits, t, s, i, settings,
                     schedule)
      order_BxL = record_order(order_BxL, z_BxL, new_z, clock_start + i + 1, vocab_size)
      return (new_z, logits, jnp.any(new_z != z_BxL), nfe + (changed | (not reuse_allowed)).astype(jnp.int32),
              order_BxL)

    start = (z_BxL, jnp.zeros(z_BxL.shape + (vocab_size,), jnp.float32), jnp.array(True), jnp.zeros((), jnp.int32),
             order_BxL)
    z_BxL, _, _, nfe, order_BxL = jax.lax.fori_loop(0, steps, step, start)
    return z_BxL, nfe, order_BxL

  return run


def unmask_prob(schedule, t, s):
  """P(a position masked at t is unmasked at s < t) = (alpha_s - alpha_t) / (1 - alpha_t); 1 at s = 0,
  where the reverse process ends fully unmasked (alpha_0 = 1 - eps is only a numerical guard).
  A scalar, or [V] (one per token it would become) for per-token schedules (GenMD4)."""
  return jnp.where(s == 0, 1.0, (schedule.alpha(s) - schedule.alpha(t)) / schedule.mask_prob(t))


def unmask_draw(key, log_probs_BxLxV, q):
  """[B, L]: one draw over (vocabulary + stay masked) with probabilities (p * q, 1 - q), or with per-token q_v
  (GenMD4) (p_v q_v, sum_v p_v (1 - q_v)); V means "stays masked"."""
  if jnp.ndim(q):
    stay = jax.nn.logsumexp(log_probs_BxLxV + jnp.log1p(-q), axis=-1, keepdims=True)
  else:
    stay = jnp.broadcast_to(jnp.log1p(-q), log_probs_BxLxV.shape[:-1] + (1,))
  return categorical(key, jnp.concatenate([log_probs_BxLxV + jnp.log(q), stay], axis=-1))


def _ancestral_update(key, z_BxL, is_masked_BxL, active_BxL, logits, t, s, i, settings, schedule):
  """MD4's step: each masked position unmasks with probability q to a token drawn from the model."""
  log_probs = process_logits(logits, settings)
  choice_BxL = unmask_draw(key, log_probs, unmask_prob(schedule, t, s))
  unmask_BxL = is_masked_BxL & (choice_BxL < log_probs.shape[-1])
  return jnp.where(unmask_BxL, choice_BxL, z_BxL)


def _mean_update(key, z_BxL, is_masked_BxL, active_BxL, logits, t, s, i, settings, schedule):
  """The same step in two stages: draw x0 at every position, then unmask each with probability q (q_x0)."""
  token_key, unmask_key = jax.random.split(key)
  x0_BxL = categorical(token_key, process_logits(logits, settings))
  q = unmask_prob(schedule, t, s)
  unmask_BxL = is_masked_BxL & (uniform(unmask_key, z_BxL.shape) < (q[x0_BxL] if jnp.ndim(q) else q))
  return jnp.where(unmask_BxL, x0_BxL, z_BxL)


SAMPLERS = {"ancestral": grid_sampler(_ancestral_update), "mean": grid_sampler(_mean_update)}
