"""MD4: the continuous-time (or T-step) negative ELBO of masked diffusion, and its reverse-process samplers."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from md4_jax import samplers
from md4_jax.core import diffusion
from md4_jax.core.attention_masks import CAUSAL
from md4_jax.core.fused_head import token_nll
from md4_jax.core.schedules import get_schedule
from md4_jax.objectives.base import Objective, check_shift, check_shift_cache, refuse

GATHER_MIN_VOCAB = 1024  # below this the output layer is cheap and gathering costs more than it saves


def logits_capacity_fraction(config, vocab_size: int, schedule, rows: int, length: int) -> float:
  """Share of a block of `rows` sequences given to the output layer: train.logits_capacity, or (at -1) auto.

  Auto: 1 (every position) for vocabularies under GATHER_MIN_VOCAB or i.i.d. times. With
  antithetic times a block's expected masked share is known for each offset u of the draw,
  so auto takes its worst case over u plus 4 binomial standard deviations: the exact
  fallback then almost never runs.
  """
  fraction = config.train.logits_capacity
  if fraction != -1:
    return float(fraction)
  if vocab_size < GATHER_MIN_VOCAB or not config.diffusion.antithetic:
    return 1.0
  batch = config.train.batch_size // config.train.grad_accum
  u = np.arange(256) / 256
  worst = 0.0
  for block in np.split(diffusion.spread_order(batch) / batch, batch // rows):
    t = jnp.asarray(np.mod(u[:, None] + block[None, :], 1.0))
    if config.diffusion.timesteps:
      t = diffusion.discretize_times(t, config.diffusion.timesteps)
    worst = max(worst, float(jnp.max(jnp.mean(schedule.mask_prob(t), axis=1))))
  noise = 4.0 * math.sqrt(0.25 / (rows * length))  # binomial std of a share is at most sqrt(1/4 / n)
  return min(1.0, worst + noise)


def gather_capacity(capacity_fraction: float, shape_BxL, groups: int) -> int | None:
  """Masked positions gathered per row block before the output layer (None: every position, at fraction 1)."""
  if capacity_fraction >= 1.0:
    return None
  batch_size, length = shape_BxL
  return max(1, math.ceil(capacity_fraction * (batch_size // groups) * length))


class MD4(Objective):
  """The MD4 objective; `diffusion.*` keys pick the schedule, time sampling and bound. Any backbone,
  time-conditioned or not; --mode eval reports an upper bound on the negative log-likelihood."""

  name = "md4"

  def __init__(self, config, vocab_size: int):
    super().__init__(config, vocab_size)
    self.schedule = get_schedule(config.diffusion.schedule)

  @classmethod
  def check_config(cls, config) -> None:
    check_shift(config)
    steps = config.diffusion.anneal_steps
    if steps < 0:
      refuse(f"diffusion.anneal_steps={steps} must be >= 0 (0 = bidirectional attention from the first step)")
    if steps and config.model.backbone != "transformer":
      refuse(f"diffusion.anneal_steps={steps} anneals the transformer's attention; model.backbone="
             f"{config.model.backbone!r} has no attention mask to anneal: set diffusion.anneal_steps=0")

  def network_context(self, step, key, length: int) -> dict:
    """diffusion.anneal_steps = N > 0 (DiffuLLaMA's attention annealing, for weights trained causally): in step s
    each query attends to the keys at or before it and to each later key with probability min(1, (s + 1) / N),
    one [L, L] draw per step; bidirectional from step N - 1. Evaluation and sampling are bidirectional always."""
    steps = int(self.config.diffusion.anneal_steps)
    if not steps:
      return {}
    share = jnp.minimum(1.0, (step + 1.0) / steps)
    return {"mask": CAUSAL.allowed(length) | (jax.random.uniform(key, (length, length)) < share)}

  def capacity_fraction(self, rows: int, length: int) -> float:
    """Share of a block of `rows` sequences of `length` tokens given to the output layer (1 = every position)."""
    return logits_capacity_fraction(self.config, self.vocab_size, self.schedule, rows, length)

  def bound_name(self, timesteps: int) -> str:
    return "continuous-time negative-ELBO bound" if timesteps == 0 else f"{timesteps}-step negative-ELBO bound"

  def terms(self, net, x0_BxL, key, *, token_mask_BxL, timesteps: int, t_B=None, capacity_fraction: float = 1.0,
            groups: int = 1, training: bool = False) -> dict:
    """One-sample estimate of the bound's terms per example (see `diffusion.elbo_terms`).

    A network that splits its output layer off (net.splits_head) has it fused with the loss; then
    capacity_fraction < 1 applies it only at masked positions (up to that share of each of `groups` row blocks).
    """
    net, fused = self.network(net), {}  # one draw of z_t per example, in training and evaluation alike
    if net.splits_head:
      # Training: the output layer's gradient is made in its forward pass (`weighted_nll`), one matmul fewer.
      fused = {"head_loss": net.head_loss, "groups": groups, "weighted_nll": net.weighted_nll if training else None,
               "capacity": gather_capacity(capacity_fraction, x0_BxL.shape, groups)}
    return diffusion.elbo_terms(
        net.features if fused else net, x0_BxL, key, self.schedule, vocab_size=self.vocab_size,
        timesteps=timesteps, antithetic=self.config.diffusion.antithetic, token_mask_BxL=token_mask_BxL,
        t_B=t_B, **fused)

  def conditional_loss(self, net, x0_BxL, key, *, scored_BxL, unknown_BxL, t_B):
    """The continuous-time bound restricted to the scored positions, one draw: each scored token masked with
    probability 1 - alpha(t_b), the other known tokens clean, the unknown ones masked throughout."""
    masked_BxL = scored_BxL & (jax.random.uniform(key, x0_BxL.shape) < self.schedule.mask_prob(t_B)[:, None])
    z_BxL = jnp.where(masked_BxL | unknown_BxL, self.vocab_size, x0_BxL)
    nll_BxL = token_nll(self.network(net)(z_BxL, t_B), x0_BxL)
    weight_Bx1 = diffusion.bound_weight(self.schedule, t_B, 0)[:, None]
    diffusion_B = jnp.sum(jnp.where(masked_BxL, weight_Bx1 * nll_BxL, 0.0), axis=-1)
    return diffusion.bound_terms(diffusion_B, jnp.sum(scored_BxL, axis=-1), self.schedule, self.vocab_size)["loss"]

  def greedy_tokens(self, net, x0_BxL, *, scored_BxL, unknown_BxL):
    """Every scored position masked, at the time whose mask rate is the row's masked share."""
    hidden_BxL = scored_BxL | unknown_BxL
    z_BxL = jnp.where(hidden_BxL, self.vocab_size, x0_BxL)
    return jnp.argmax(self.network(net)(z_BxL, jnp.mean(hidden_BxL, axis=-1)), axis=-1)

  def sample(self, denoise, key, z_BxL, settings, *, time_dependent: bool, module):
    """(tokens_BxL, NFE, order_BxL): the configured reverse-process sampler (see md4_jax/samplers/)."""
    check_shift_cache(self.config.diffusion.shift, settings.kv_cache)
    return samplers.sample(self.network(denoise), key, self.schedule, z_BxL, settings, vocab_size=self.vocab_size,
                           time_dependent=time_dependent, return_order=True, module=module)


OBJECTIVE = MD4
