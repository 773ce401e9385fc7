"""GenMD4 (`objective = "genmd4"`): MD4 with a learned polynomial schedule per token, trained with the network.

The powers w_v = softplus(theta_v) are parameters beside the backbone's (`WithSchedule`), so sharding,
EMA, the optimizer, checkpoints and resume treat them like any weight. A training step draws two z_t at
the same (x0, t): the bound (`loss`, logged as train/loss) is the mean of the two estimates, and the
optimised `surrogate` adds the leave-one-out REINFORCE term that carries the gradient through the
masking distribution to theta. `diffusion.genmd4.network_draws = 1` back-propagates the network through
the first draw only (the second still serves the schedule's gradient). See md4_jax/core/per_token.py.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from md4_jax import samplers
from md4_jax.core import diffusion, per_token
from md4_jax.core.schedules import Poly
from md4_jax.models.layers import param
from md4_jax.objectives import genmd4_powers
from md4_jax.objectives.base import Objective, check_shift, check_shift_cache, refuse
from md4_jax.objectives.md4 import gather_capacity, logits_capacity_fraction
from md4_jax.samplers import thinning


def config_group() -> ml_collections.ConfigDict:
  """diffusion.genmd4.*: gathered by configs/base.py."""
  group = ml_collections.ConfigDict()
  group.initial_power = 1.0  # w_v at the start: alpha_{t,v} = 1 - t^w_v (1 = linear)
  group.t_min = 1e-3  # times drawn in [t_min, 1]; the reconstruction term is taken at t_min
  group.network_draws = 2  # draws of z_t the network's gradient uses (the schedule's: always 2)
  group.learning_rate = -1.0  # the schedule's peak learning rate; -1 = train.learning_rate
  return group


def inverse_softplus(y: float) -> float:
  return y + math.log(-math.expm1(-y))  # log(exp(y) - 1) without overflow


class LearnedPowers(nnx.Module):
  """theta[V]; the schedule powers are softplus(theta) (> 0), replicated on every device."""

  def __init__(self, vocab_size: int, initial_power: float, rngs):
    init = lambda key, shape: jnp.full(shape, inverse_softplus(initial_power), jnp.float32)  # noqa: E731
    self.theta = param(rngs, init, (vocab_size,), (None,))

  def __call__(self):
    return jax.nn.softplus(self.theta[...])


class WithSchedule(nnx.Module):
  """A backbone and the learned powers in one module (one params tree); calls go to the backbone."""

  def __init__(self, backbone, powers: LearnedPowers):
    self.backbone, self.schedule = backbone, powers

  def __call__(self, *args, **kwargs):
    return self.backbone(*args, **kwargs)

  @property
  def splits_head(self) -> bool:
    return self.backbone.splits_head

  def features(self, *args, **kwargs):
    return self.backbone.features(*args, **kwargs)

  def head_logits(self, h):
    return self.backbone.head_logits(h)

  def head_loss(self, h, x0, **loss):
    return self.backbone.head_loss(h, x0, **loss)


# The samplers for a per-token schedule: `exact` is the state-dependent reverse process simulated by thinning.
SAMPLERS = {**samplers.SAMPLERS, "exact": thinning.exact}


class GenMD4(Objective):
  """`diffusion.genmd4.*` keys: initial_power, t_min, network_draws, learning_rate (see configs/base.py)."""

  name = "genmd4"

  def __init__(self, config, vocab_size: int):
    super().__init__(config, vocab_size)
    self.settings = config.diffusion.genmd4
    self.t_min = float(self.settings.t_min)

  @classmethod
  def check_config(cls, config) -> None:
    check_shift(config)
    settings = config.diffusion.genmd4
    if settings.initial_power <= 0:
      refuse(f"diffusion.genmd4.initial_power={settings.initial_power} must be > 0 (1 = the linear schedule)")
    if not 0.0 <= settings.t_min < 1.0:
      refuse(f"diffusion.genmd4.t_min={settings.t_min} must be in [0, 1) (the reference uses 1e-3)")
    if settings.network_draws not in (1, 2):
      refuse(f"diffusion.genmd4.network_draws={settings.network_draws}: choose 1 or 2 (draws of z_t the network's "
             "gradient uses; the schedule's always uses both)")
    if settings.learning_rate != -1 and settings.learning_rate < 0:
      refuse(f"diffusion.genmd4.learning_rate={settings.learning_rate}: use -1 (train.learning_rate) or a peak "
             "learning rate >= 0")
    if config.diffusion.schedule != "linear":
      refuse(f"diffusion.schedule={config.diffusion.schedule!r} has no effect with objective='genmd4' (its schedule "
             "is learned, starting from diffusion.genmd4.initial_power): leave it 'linear'")

  def wrap_model(self, make_backbone):
    """`make(rngs)` for the backbone with the schedule's parameters beside it."""
    initial_power, vocab_size = float(self.settings.initial_power), self.vocab_size
    return lambda rngs: WithSchedule(make_backbone(rngs), LearnedPowers(vocab_size, initial_power, rngs))

  def own_learning_rates(self) -> dict:
    """diffusion.genmd4.learning_rate >= 0: the schedule's own peak learning rate (-1: the network's)."""
    rate = float(self.settings.learning_rate)
    return {"schedule": rate} if rate >= 0 else {}

  def capacity_fraction(self, rows: int, length: int) -> float:
    # Sized for the initial powers; when learned powers mask more, the exact fallback runs more often.
    return logits_capacity_fraction(self.config, self.vocab_size, Poly(float(self.settings.initial_power)),
                                    rows, length)

  def bound_name(self, timesteps: int) -> str:
    kind = "continuous-time" if timesteps == 0 else f"{timesteps}-step"
    return f"{kind} negative-ELBO bound (GenMD4, learned per-token schedule)"

  @staticmethod
  def schedule(module) -> per_token.TokenPoly:
    return per_token.TokenPoly(module.schedule())

  def eval_extras(self, module, step: int, workdir, modality) -> list:
    """eval/powers_step_N.png and .json: the learned powers, sorted (genmd4_powers.py)."""
    return genmd4_powers.write(workdir, step, np.asarray(jax.device_get(module.schedule())), modality)

  def state_metrics(self, module) -> dict:
    powers = module.schedule()
    return {"power_min": jnp.min(powers), "power_mean": jnp.mean(powers), "power_max": jnp.max(powers)}

  def terms(self, net, x0_BxL, key, *, token_mask_BxL, timesteps: int, t_B=None, capacity_fraction: float = 1.0,
            groups: int = 1, training: bool = False) -> dict:
    """The bound's terms per example in nats; training adds the second draw and `surrogate`."""
    schedule = self.schedule(net.module)
    net = self.network(net)  # shifted under diffusion.shift
    batch_size, length = x0_BxL.shape
    time_key, mask_key = jax.random.split(key)  # as MD4's: with equal powers draw 1 is MD4's z_t
    draw_keys = (mask_key, jax.random.fold_in(mask_key, 1))
    u_B = diffusion.sample_times(time_key, batch_size, self.config.diffusion.antithetic) if t_B is None else t_B
    if timesteps:
      t_B = diffusion.discretize_times(u_B, timesteps)
      keep_BxV = schedule.mask_prob(t_B - 1.0 / timesteps) / schedule.mask_prob(t_B)
      token_loss, row_values, scale, recon_time = per_token.step_kl, keep_BxV, float(timesteps), 0.0
    else:
      t_B = self.t_min + (1.0 - self.t_min) * u_B
      token_loss, row_values = per_token.integrand, schedule.rate(t_B)
      scale, recon_time = 1.0 - self.t_min, self.t_min
    mask_prob_BxL = per_token.token_values(schedule.mask_prob(t_B), x0_BxL)
    capacity = gather_capacity(capacity_fraction, x0_BxL.shape, groups)

    def one_draw(draw_key, position_loss):
      """(sum over masked positions of position_loss(logits, x0, row values) [B], log q(z | x0) [B])."""
      z_BxL = per_token.mask_tokens(draw_key, x0_BxL, mask_prob_BxL, self.vocab_size, token_mask_BxL)
      if net.splits_head:  # the output layer fused with the loss (and gathered at masked positions)
        loss_B, _, _ = diffusion.masked_head_loss(
            net.features(z_BxL, t_B), net.head_loss, x0_BxL, z_BxL, self.vocab_size, capacity=capacity,
            groups=groups, token_loss=position_loss, row_values_BxR=row_values)
      else:
        loss_BxL = position_loss(net(z_BxL, t_B), x0_BxL, row_values[:, None])
        loss_B = jnp.sum(jnp.where(z_BxL == self.vocab_size, loss_BxL, 0.0), axis=-1)
      return scale * loss_B, per_token.log_q(z_BxL, x0_BxL, mask_prob_BxL, self.vocab_size, token_mask_BxL)

    terms = {"reconstruction": per_token.reconstruction(schedule, x0_BxL, token_mask_BxL, recon_time),
             "prior": per_token.prior(schedule, x0_BxL, token_mask_BxL, self.vocab_size),
             "num_tokens": jnp.sum(token_mask_BxL, axis=-1).astype(jnp.float32)}
    if not training:
      terms["diffusion"], _ = one_draw(draw_keys[0], token_loss)
    elif self.settings.network_draws == 2:
      loss_1, log_q_1 = one_draw(draw_keys[0], token_loss)
      loss_2, log_q_2 = one_draw(draw_keys[1], token_loss)
      terms["diffusion"] = 0.5 * (loss_1 + loss_2)
      terms["surrogate"] = terms["diffusion"] + per_token.rloo(loss_1, loss_2, log_q_1, log_q_2)
    else:
      # Each draw's half of the mean, arranged so the network's gradient comes from draw 1 alone (in full)
      # while theta's comes from both: l(logits) - l(sg(logits)) / 2 has value l / 2 and the network
      # gradient of l; l(sg(logits)) / 2 carries theta's half only (no backward pass through the network).
      fixed = lambda loss: lambda lg, x0, v: loss(jax.lax.stop_gradient(lg), x0, v)  # noqa: E731
      half_1, log_q_1 = one_draw(draw_keys[0], lambda lg, x0, v: token_loss(lg, x0, v)
                                 - 0.5 * fixed(token_loss)(lg, x0, v))
      half_2, log_q_2 = one_draw(draw_keys[1], lambda lg, x0, v: 0.5 * fixed(token_loss)(lg, x0, v))
      terms["diffusion"] = half_1 + half_2
      terms["surrogate"] = terms["diffusion"] + per_token.rloo(2.0 * half_1, 2.0 * half_2, log_q_1, log_q_2)
    terms["loss"] = terms["diffusion"] + terms["reconstruction"] + terms["prior"]
    if training:
      terms["surrogate"] = terms["surrogate"] + terms["reconstruction"] + terms["prior"]
    return terms

  def conditional_loss(self, net, x0_BxL, key, *, scored_BxL, unknown_BxL, t_B):
    """The continuous-time bound restricted to the scored positions, one draw at u = t_B (t = t_min + (1 - t_min) u,
    as training draws it): each scored token x masked with its own m_x(t), the other known tokens clean, the unknown
    ones masked throughout; plus the scored tokens' reconstruction and prior terms."""
    schedule = self.schedule(net.module)
    t_B = self.t_min + (1.0 - self.t_min) * t_B
    z_BxL = per_token.mask_tokens(key, x0_BxL, per_token.token_values(schedule.mask_prob(t_B), x0_BxL),
                                  self.vocab_size, scored_BxL)
    z_BxL = jnp.where(unknown_BxL, self.vocab_size, z_BxL)
    loss_BxL = per_token.integrand(self.network(net)(z_BxL, t_B), x0_BxL, schedule.rate(t_B)[:, None])
    diffusion_B = (1.0 - self.t_min) * jnp.sum(jnp.where(scored_BxL & (z_BxL == self.vocab_size), loss_BxL, 0.0), -1)
    return (diffusion_B + per_token.reconstruction(schedule, x0_BxL, scored_BxL, self.t_min)
            + per_token.prior(schedule, x0_BxL, scored_BxL, self.vocab_size))

  def greedy_tokens(self, net, x0_BxL, *, scored_BxL, unknown_BxL):
    """MD4's one call: every scored position masked, at the time whose mean mask rate is the row's masked share."""
    hidden_BxL = scored_BxL | unknown_BxL
    t_B = samplers.exact.time_of_mask_prob(self.schedule(net.module), jnp.mean(hidden_BxL, axis=-1))
    return jnp.argmax(self.network(net)(jnp.where(hidden_BxL, self.vocab_size, x0_BxL), t_B), axis=-1)

  def sample(self, denoise, key, z_BxL, settings, *, time_dependent: bool, module):
    """(tokens_BxL, NFE, order_BxL) from the state-dependent reverse process with the learned powers."""
    check_shift_cache(self.config.diffusion.shift, settings.kv_cache)
    return samplers.sample(self.network(denoise), key, self.schedule(module), z_BxL, settings, vocab_size=self.vocab_size,
                           time_dependent=time_dependent, return_order=True, samplers=SAMPLERS, module=module)


OBJECTIVE = GenMD4
