"""`exact` for a shared schedule: the continuous-time reverse process simulated event by event (first hitting).
Per-token schedules (GenMD4) have their own: thinning.py. Its key: sampler.exact.tokens_per_call."""

import jax
import jax.numpy as jnp
import ml_collections

from md4_jax.samplers.draws import categorical, process_logits, record_order, uniform


def config_group() -> ml_collections.ConfigDict:
  """sampler.exact.*: gathered by configs/base.py."""
  group = ml_collections.ConfigDict()
  group.tokens_per_call = 1  # unmasking events per network call (k > 1 is approximate)
  return group


def check_config(config, length: int) -> None:
  """A sample has `length` positions: more events per call than that would fail in jax.lax.top_k at the first
  samples, minutes into a run."""
  tokens_per_call = config.sampler.exact.tokens_per_call
  if tokens_per_call < 1:
    raise ValueError(f"sampler.exact.tokens_per_call={tokens_per_call} must be >= 1")
  if tokens_per_call > length:
    raise ValueError(f"sampler.exact.tokens_per_call={tokens_per_call} unmasks more positions per call than the "
                     f"{length} of a sample (data.seq_len; H x W x C for images): use 1 to {length}")


def time_of_mask_prob(schedule, mask_prob_B, iterations: int = 32):
  """t in [0, 1] with schedule.mean_mask_prob(t) = mask_prob_B, by bisection (it increases with t; a shared
  schedule's mean is its mask_prob)."""

  def halve(_, bounds):
    low, high = bounds
    middle = (low + high) / 2
    below = schedule.mean_mask_prob(middle) < mask_prob_B
    return jnp.where(below, middle, low), jnp.where(below, high, middle)

  bounds = (jnp.zeros_like(mask_prob_B), jnp.ones_like(mask_prob_B))
  return jax.lax.fori_loop(0, iterations, halve, bounds, unroll=True)[1]  # unrolled: one fused kernel


def _exact(denoise, key, schedule, z_BxL, active_BxL, settings, vocab_size, time_dependent, order_BxL):
  """The continuous-time reverse process simulated event by event (first-hitting).

  With n positions masked at time t, each unmasks independently at a time tau with
  P(tau < s) = (1 - alpha_s) / (1 - alpha_t), so the next event is at the largest of n such times:
  log(1 - alpha_s1) = log(1 - alpha_t) + log(u) / n. The network is called once at (z, s1), the state
  of the whole interval (s1, t]; a uniformly chosen masked position takes a token from it.
  With k = tokens_per_call, the next k events all use that call (an approximation for k > 1).
  """
  k, batch_size = settings.tokens_per_call, z_BxL.shape[0]
  log_mask_prob_B = jnp.full((batch_size,), jnp.log(schedule.mask_prob(1.0)))
  clock_start = jnp.max(order_BxL)

  def unmasking(carry):
    return jnp.any((carry[0] == vocab_size) & active_BxL)

  def event(carry):
    z_BxL, log_mask_prob_B, nfe, order_BxL = carry
    step_key = jax.random.fold_in(key, nfe)
    time_key, position_key, token_key = jax.random.split(step_key, 3)
    is_masked_BxL = (z_BxL == vocab_size) & active_BxL
    n_B = is_masked_BxL.sum(-1)
    remaining_BxK = n_B[:, None] - jnp.arange(k)
    log_u_BxK = jnp.log(uniform(time_key, (batch_size, k)))
    steps_BxK = jnp.where(remaining_BxK > 0, log_u_BxK / jnp.maximum(remaining_BxK, 1), 0.0)
    log_after_BxK = log_mask_prob_B[:, None] + jnp.cumsum(steps_BxK, axis=-1)
    t_B = time_of_mask_prob(schedule, jnp.exp(log_after_BxK[:, 0]))
    logits = denoise(z_BxL, t_B).astype(jnp.float32)
    tokens_BxL = categorical(token_key, process_logits(logits, settings))
    score_BxL = jnp.where(is_masked_BxL, uniform(position_key, z_BxL.shape), -1.0)
    chosen_BxK = jax.lax.top_k(score_BxL, k)[1]  # k uniformly chosen masked positions (fewer if n < k)
    unmask_BxL = is_masked_BxL & jnp.any(jax.nn.one_hot(chosen_BxK, z_BxL.shape[1], dtype=bool), axis=1)
    new_z = jnp.where(unmask_BxL, tokens_BxL, z_BxL)
    return new_z, log_after_BxK[:, -1], nfe + 1, record_order(order_BxL, z_BxL, new_z, clock_start + nfe + 1,
                                                               vocab_size)

  z_BxL, _, nfe, order_BxL = jax.lax.while_loop(
      unmasking, event, (z_BxL, log_mask_prob_B, jnp.zeros((), jnp.int32), order_BxL))
  return z_BxL, nfe, order_BxL


SAMPLERS = {"exact": _exact}
