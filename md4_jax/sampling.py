"""Samplers: pure functions over a `denoise(z_BxL, t_B) -> logits_BxLxV` callable.

They jit with static shapes and `lax` loops, so they run on any network and
are testable against an analytic denoiser.
"""

import jax
import jax.numpy as jnp


def time_grid(steps: int, grid: str = "cosine"):
  """[steps + 1] times from 0 to 1. The cosine grid t = cos(pi/2 (1 - u)) unmasks fewer tokens early."""
  u = jnp.linspace(0.0, 1.0, steps + 1)
  if grid == "uniform":
    return u
  if grid == "cosine":
    return jnp.cos(jnp.pi / 2 * (1.0 - u)).at[0].set(0.0).at[-1].set(1.0)
  raise ValueError(f"unknown time grid {grid!r}; choose 'uniform' or 'cosine'")


def ancestral_sample(denoise, key, schedule, *, batch_size: int, length: int, vocab_size: int,
                     steps: int, grid: str = "cosine", temperature: float = 1.0):
  """MD4's ancestral sampler: from all-mask at t=1, `steps` reverse steps to t=0.

  From t to s < t each masked position unmasks with probability
  (alpha_s - alpha_t) / (1 - alpha_t), its token drawn from p(. | z_t); unmasked
  tokens never change. Positions still masked at the end take the last argmax.

  Returns:
    (tokens_BxL in [0, V), number of network calls).
  """
  times = time_grid(steps, grid)
  mask_id = vocab_size

  def step(i, carry):
    z_BxL, _, key = carry
    key, unmask_key, token_key = jax.random.split(key, 3)
    t, s = times[steps - i], times[steps - i - 1]
    logits_BxLxV = denoise(z_BxL, jnp.full((batch_size,), t)).astype(jnp.float32)
    unmask_prob = (schedule.alpha(s) - schedule.alpha(t)) / schedule.mask_prob(t)
    tokens_BxL = jax.random.categorical(token_key, logits_BxLxV / temperature, axis=-1)
    unmask_BxL = (z_BxL == mask_id) & (jax.random.uniform(unmask_key, z_BxL.shape) < unmask_prob)
    return jnp.where(unmask_BxL, tokens_BxL, z_BxL), jnp.argmax(logits_BxLxV, axis=-1), key

  z_BxL = jnp.full((batch_size, length), mask_id, jnp.int32)
  argmax_BxL = jnp.zeros((batch_size, length), jnp.int32)
  z_BxL, argmax_BxL, _ = jax.lax.fori_loop(0, steps, step, (z_BxL, argmax_BxL, key))
  return jnp.where(z_BxL == mask_id, argmax_BxL, z_BxL), steps
