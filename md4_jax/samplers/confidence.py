"""`confidence`: MaskGIT / LLaDA on the time grid (grid.py's walk): each step draws every masked position and keeps
the most confident, the count still masked following the schedule. Its key: sampler.confidence.choice_temperature."""

import jax
import jax.numpy as jnp
import ml_collections

from md4_jax.samplers.draws import categorical, process_logits
from md4_jax.samplers.grid import grid_sampler


def config_group() -> ml_collections.ConfigDict:
  """sampler.confidence.*: gathered by configs/base.py."""
  group = ml_collections.ConfigDict()
  group.choice_temperature = 4.5  # Gumbel noise on log-confidence, annealed to 0; 0 = LLaDA's low-confidence remasking
  return group


def check_config(config, length: int) -> None:
  del length
  if config.sampler.confidence.choice_temperature < 0:
    raise ValueError(f"sampler.confidence.choice_temperature={config.sampler.confidence.choice_temperature} must be "
                     ">= 0")


def _rank_desc(score_BxL):
  """Rank of each entry in its row, 0 = largest (ties: leftmost first)."""
  return jnp.argsort(jnp.argsort(-score_BxL, axis=-1, stable=True), axis=-1, stable=True)


def _update(key, z_BxL, is_masked_BxL, active_BxL, logits, t, s, i, settings, schedule):
  """MaskGIT: draw every masked position, keep the most confident ones, re-mask the rest.

  The count still masked after the step follows the schedule, round(initial * (1 - alpha_s) / (1 - alpha_1)),
  0 at the end. Confidence = the model's log p(drawn token) (before temperature, top-k, top-p)
  + choice_temperature * (1 - (i + 1) / steps) * Gumbel noise; choice_temperature 0 is LLaDA's
  low-confidence remasking.
  """
  token_key, noise_key = jax.random.split(key)
  x0_BxL = categorical(token_key, process_logits(logits, settings))
  model_log_probs = jax.nn.log_softmax(logits, axis=-1)
  confidence_BxL = jnp.take_along_axis(model_log_probs, x0_BxL[..., None], axis=-1)[..., 0]
  anneal = settings.choice_temperature * (1.0 - (i + 1) / settings.steps)
  score_BxL = confidence_BxL + anneal * jax.random.gumbel(noise_key, z_BxL.shape, mode="high")
  score_BxL = jnp.where(is_masked_BxL, score_BxL, -jnp.inf)
  keep_masked_B = jnp.where(s == 0, 0, jnp.round(active_BxL.sum(-1) * schedule.mean_mask_prob(s)
                                                 / schedule.mean_mask_prob(1.0)))
  unmask_count_B = jnp.maximum(is_masked_BxL.sum(-1) - keep_masked_B.astype(jnp.int32), 0)
  unmask_BxL = is_masked_BxL & (_rank_desc(score_BxL) < unmask_count_B[:, None])
  return jnp.where(unmask_BxL, x0_BxL, z_BxL)


SAMPLERS = {"confidence": grid_sampler(_update)}
