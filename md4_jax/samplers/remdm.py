"""`remdm`: ReMDM (Wang et al., 2025), the ancestral walk in which a decoded token may be masked again.

From s < t, with sigma_t in [0, sigma_max], sigma_max = min(1, (1 - alpha_s) / alpha_t):
  a decoded token stays with probability 1 - sigma_t and is masked again with sigma_t;
  a masked position becomes v with probability p_v (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t), else stays.
Given the clean token both keep q(z_s | x) = Cat(alpha_s x + (1 - alpha_s) m), the forward marginal, for any
sigma: the network's bound is unchanged, and sigma = 0 is MD4's ancestral step (the same draws, tested).
Per-token schedules (GenMD4) take all of it token by token: sigma, sigma_max and alpha are vectors over what
the position holds or would become. How sigma_t is chosen (sampler.remdm.strategy):
  "cap":     sigma_t = min(eta, sigma_max) at every step, on the ancestral sampler's time grid;
  "rescale": sigma_t = eta * sigma_max, on the same grid;
  "loop":    the steps split at t_on > t_off on a uniform clock u from 1 to 0: ancestral from alpha = 0 to
             alpha_on (u from 1 to t_on), then alpha held at alpha_on with sigma_t = eta (tokens are masked and
             redrawn at a constant level), then ancestral from alpha_on to 1 (u from t_off to 0); alpha moves
             linearly in u, and the network is called at the time where the schedule's mean alpha is the target.
sampler.steps counts network calls for all three (the cache that skips unchanged inputs aside). See
docs/sampling.md.
"""

import jax
import jax.numpy as jnp
import ml_collections

from md4_jax.samplers.draws import process_logits, uniform
from md4_jax.samplers.exact import time_of_mask_prob
from md4_jax.samplers.grid import grid_sampler, grid_times, unmask_draw, unmask_prob

STRATEGIES = ("cap", "rescale", "loop")


def config_group() -> ml_collections.ConfigDict:
  """sampler.remdm.*: gathered by configs/base.py. Defaults: the loop settings of the paper's OpenWebText runs."""
  group = ml_collections.ConfigDict()
  group.strategy = "loop"  # "cap" | "rescale" | "loop" (see md4_jax/samplers/remdm.py)
  group.eta = 0.02  # cap: sigma's cap; rescale: sigma's share of sigma_max (<= 1); loop: sigma in the loop
  group.t_on = 0.55  # loop: the share of steps (from the end) at which the loop starts
  group.t_off = 0.05  # loop: ... and ends (< t_on)
  group.alpha_on = 0.9  # loop: the share of tokens decoded during the loop
  return group


def check_config(config, length: int) -> None:
  del length
  own = config.sampler.remdm
  if own.strategy not in STRATEGIES:
    raise ValueError(f"sampler.remdm.strategy={own.strategy!r}; choose one of {STRATEGIES}")
  if own.eta < 0:
    raise ValueError(f"sampler.remdm.eta={own.eta} must be >= 0 (0 = the ancestral sampler)")
  if own.strategy == "rescale" and own.eta > 1:
    raise ValueError(f"sampler.remdm.eta={own.eta} must be <= 1 for strategy='rescale' (a share of sigma_max)")
  if own.strategy == "loop":
    if not 0.0 <= own.t_off < own.t_on < 1.0:
      raise ValueError(f"sampler.remdm.t_on={own.t_on}, t_off={own.t_off}: need 0 <= t_off < t_on < 1")
    if not 0.0 < own.alpha_on < 1.0:
      raise ValueError(f"sampler.remdm.alpha_on={own.alpha_on} must be in (0, 1)")
    most = (1.0 - own.alpha_on) / own.alpha_on  # sigma_max while alpha stays at alpha_on
    if own.eta > most:
      raise ValueError(f"sampler.remdm.eta={own.eta} exceeds (1 - alpha_on) / alpha_on = {most:.4g}, the most "
                       f"a loop at alpha_on={own.alpha_on} can remask; lower eta or alpha_on")


def loop_alphas(settings):
  """[steps + 1] target alphas, increasing (index i: u = i / steps): the loop strategy's path."""
  u = jnp.linspace(0.0, 1.0, settings.steps + 1)
  rising = settings.alpha_on * (1.0 - u) / (1.0 - settings.t_on)  # u in [t_on, 1]: from 0 to alpha_on
  finishing = 1.0 - (1.0 - settings.alpha_on) * u / settings.t_off if settings.t_off > 0 else settings.alpha_on
  return jnp.where(u >= settings.t_on, rising, jnp.where(u <= settings.t_off, finishing, settings.alpha_on))


def _times(settings, schedule):
  """The walk: the ancestral grid, or for the loop the times where the schedule's mean alpha is loop_alphas."""
  if settings.strategy != "loop":
    return grid_times(settings, schedule)
  times = time_of_mask_prob(schedule, 1.0 - loop_alphas(settings))
  return times.at[0].set(0.0).at[-1].set(1.0)


def _in_loop(settings, i):
  """Whether step i (from t = times[steps - i] to s = times[steps - i - 1]) lies inside the loop."""
  u_t, u_s = 1.0 - i / settings.steps, 1.0 - (i + 1) / settings.steps
  return (u_t <= settings.t_on + 1e-6) & (u_s >= settings.t_off - 1e-6)


def _sigma(settings, alpha_t, alpha_s, i):
  """sigma_t for the chosen strategy (a scalar, or [V] for per-token schedules)."""
  sigma_max = jnp.minimum(1.0, (1.0 - alpha_s) / jnp.maximum(alpha_t, 1e-30))
  if settings.strategy == "rescale":
    return settings.eta * sigma_max
  capped = jnp.minimum(settings.eta, sigma_max)
  return capped if settings.strategy == "cap" else jnp.where(_in_loop(settings, i), capped, 0.0)


def _update(key, z_BxL, is_masked_BxL, active_BxL, logits, t, s, i, settings, schedule):
  """One ReMDM step; with sigma = 0 the very draw of grid.py's ancestral step (same key, same formula)."""
  alpha_t, mask_prob_t = schedule.alpha(t), schedule.mask_prob(t)
  alpha_s = jnp.where(s == 0, 1.0, schedule.alpha(s))  # the walk ends fully unmasked, as the ancestral one
  sigma = _sigma(settings, alpha_t, alpha_s, i)
  # (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t), written as ancestral's q plus the share sigma brings back
  unmask = jnp.minimum(unmask_prob(schedule, t, s) + sigma * alpha_t / mask_prob_t, 1.0)
  log_probs = process_logits(logits, settings)
  choice_BxL = unmask_draw(key, log_probs, unmask)
  vocab_size = log_probs.shape[-1]
  unmasked_BxL = is_masked_BxL & (choice_BxL < vocab_size)
  decoded_BxL = active_BxL & ~is_masked_BxL  # filled by this sampler: the only tokens it may mask again
  sigma_BxL = sigma[jnp.minimum(z_BxL, vocab_size - 1)] if jnp.ndim(sigma) else sigma
  remask_BxL = decoded_BxL & (uniform(jax.random.fold_in(key, 1), z_BxL.shape) < sigma_BxL)
  return jnp.where(unmasked_BxL, choice_BxL, jnp.where(remask_BxL, vocab_size, z_BxL))


SAMPLERS = {"remdm": grid_sampler(_update, _times)}
