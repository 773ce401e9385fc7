"""Masking schedules alpha(t): the probability that a token is still unmasked at t.

Every schedule is elementwise on arrays and has
  alpha(t)   in (0, 1), decreasing, alpha(0) ~ 1, alpha(1) ~ 0,
  dalpha(t)  = d alpha / dt (written out analytically; tests check it against jax.grad),
  weight(t)  = dalpha(t) / (1 - alpha(t)), the (negative) ELBO weight.
See docs/method.md, "Schedules".
"""

import dataclasses
import re

import jax.numpy as jnp

EPS = 1e-4  # keeps alpha inside (0, 1) so log(alpha) and 1 / (1 - alpha) stay finite


@dataclasses.dataclass(frozen=True)
class Schedule:
  """alpha_t = (1 - 2 eps) a(t) + eps for a base curve a with a(0) = 1, a(1) = 0."""

  def base(self, t):
    raise NotImplementedError

  def dbase(self, t):
    raise NotImplementedError

  def alpha(self, t):
    return (1.0 - 2.0 * EPS) * self.base(t) + EPS

  def dalpha(self, t):
    return (1.0 - 2.0 * EPS) * self.dbase(t)

  def mask_prob(self, t):
    """1 - alpha(t), computed without cancellation where a schedule can."""
    return 1.0 - self.alpha(t)

  def weight(self, t):
    return self.dalpha(t) / self.mask_prob(t)

  def mean_mask_prob(self, t):
    """The mask probability averaged over the vocabulary (per-token schedules differ; shared ones do not): what
    count-based samplers (confidence) keep masked."""
    return self.mask_prob(t)


@dataclasses.dataclass(frozen=True)
class Linear(Schedule):

  def base(self, t):
    return 1.0 - t

  def dbase(self, t):
    return -jnp.ones_like(t)

  def mask_prob(self, t):
    return (1.0 - 2.0 * EPS) * t + EPS


@dataclasses.dataclass(frozen=True)
class Cosine(Schedule):

  def base(self, t):
    return 1.0 - jnp.cos(jnp.pi / 2 * (1.0 - t))

  def dbase(self, t):
    return -jnp.pi / 2 * jnp.sin(jnp.pi / 2 * (1.0 - t))

  def mask_prob(self, t):
    return (1.0 - 2.0 * EPS) * jnp.cos(jnp.pi / 2 * (1.0 - t)) + EPS


@dataclasses.dataclass(frozen=True)
class Poly(Schedule):
  power: float = 1.0

  def base(self, t):
    return 1.0 - t**self.power

  def dbase(self, t):
    return -self.power * t ** (self.power - 1)

  def mask_prob(self, t):
    return (1.0 - 2.0 * EPS) * t**self.power + EPS


@dataclasses.dataclass(frozen=True)
class Geometric(Schedule):
  """alpha_t = exp(-sigma_t) with sigma_t = sigma_min^(1-t) sigma_max^t (no eps: the ends are set by sigma)."""

  sigma_min: float = 1e-4  # alpha(0) = exp(-1e-4) ~ 0.9999, like the eps of the other schedules
  sigma_max: float = 20.0  # alpha(1) = exp(-20) ~ 2e-9

  def sigma(self, t):
    return self.sigma_min ** (1.0 - t) * self.sigma_max**t

  def alpha(self, t):
    return jnp.exp(-self.sigma(t))

  def dalpha(self, t):
    log_ratio = jnp.log(self.sigma_max) - jnp.log(self.sigma_min)
    return -self.alpha(t) * self.sigma(t) * log_ratio

  def mask_prob(self, t):
    return -jnp.expm1(-self.sigma(t))


# The schedules by name; "polyK" is a family (any K > 0) parsed from the name.
SCHEDULES = {"linear": Linear, "cosine": Cosine, "geometric": Geometric}
_POLY = re.compile(r"poly(\d+(\.\d+)?)")
NAMES = (*SCHEDULES, "polyK (e.g. poly2, poly3, poly0.5)")


def get_schedule(name: str) -> Schedule:
  """Returns the schedule called `name`: one of SCHEDULES, or polyK."""
  if name in SCHEDULES:
    return SCHEDULES[name]()
  match = _POLY.fullmatch(name)
  if match and float(match.group(1)) > 0:
    return Poly(power=float(match.group(1)))
  raise ValueError(f"unknown masking schedule {name!r}; choose one of: {', '.join(NAMES)}")
