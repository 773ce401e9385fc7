"""What every sampler shares: the settings, the time grid, logits to log-probabilities (temperature, top-k,
top-p), exact-in-float32 draws, and the record of when each position was filled.

Draws are exact in float32: tokens come from `jax.random.categorical` in its high-dynamic-range mode, so a draw
out of a (vocabulary + mask) distribution whose token probabilities are ~1e-7 (one of 10^4 steps) keeps its
relative frequencies; Bernoulli draws compare against a uniform with 24 significant bits at every scale.
"""

import dataclasses

import jax
import jax.numpy as jnp

GRIDS = ("cosine", "uniform")


@dataclasses.dataclass(frozen=True)
class Settings:
  """The `sampler.*` config keys that change what is drawn, the built-in samplers' own groups (sampler.exact.*,
  sampler.parallel.*, ...) flattened into fields. Defaults and meanings are in the config (configs/base.py and
  each sampler's config_group): build Settings from a config (`samplers.settings`), or name every field."""
  name: str
  steps: int
  grid: str
  temperature: float
  top_k: int
  top_p: float
  tokens_per_call: int  # exact
  choice_temperature: float  # confidence
  block_length: int
  inner: str  # semi_ar
  cache: bool
  kv_cache: str  # "none" | "exact" (bd3: finished blocks) | "prefix" | "dual" (parallel: approximate caches)
  cache_refresh: int  # parallel with a cache: calls between whole-sequence refreshes (0: a block's first only)
  threshold: float  # parallel: unmask every position whose confidence exceeds it (and one more, see fallback)
  fallback: str  # parallel: "confidence" (the most confident masked position) | "random" (a uniform one)
  rows: str  # parallel: "own" (each row advances through its blocks on its own) | "together" (rows wait at blocks)
  guidance: float
  stop_at_end: bool  # bd3: a row stops at the block holding end_id
  strategy: str  # remdm: "cap" | "rescale" | "loop" (how sigma_t is chosen)
  eta: float  # remdm
  t_on: float  # remdm, loop
  t_off: float  # remdm, loop
  alpha_on: float  # remdm, loop
  options: tuple = ()  # a sampler outside the package: its own group's (key, value) pairs, sorted
  end_id: int = -1  # the tokenizer's end-of-text (-1: none); not a key: the Experiment sets it from the modality

  def option(self, key: str):
    """The value of `key` in the chosen outside sampler's own group (sampler.<its name>.<key>)."""
    return dict(self.options)[key]

  @classmethod
  def from_config(cls, sampler_cfg, builtin_groups: tuple) -> "Settings":
    """sampler_cfg: config.sampler. Its plain keys, and the built-in samplers' groups (samplers.BUILTIN's with a
    config_group: samplers.GROUPS), give the fields; the chosen sampler's own group, when it is a module outside
    the package (a dotted sampler.name, or semi_ar's inner sampler), gives `options`."""
    values, options = {}, ()
    name = sampler_cfg.semi_ar.inner if sampler_cfg.name == "semi_ar" else sampler_cfg.name
    own = name.rpartition(".")[2] if "." in name else None
    for key, value in sampler_cfg.items():
      if key == own:
        options = tuple(sorted(value.items()))
      elif key in builtin_groups:
        values.update(value)
      elif not hasattr(value, "items"):
        values[key] = value
    return cls(options=options, **{field.name: values[field.name] for field in dataclasses.fields(cls)
                                   if field.name not in ("options", "end_id")})


def time_grid(steps: int, grid: str = "cosine"):
  """[steps + 1] times from 0 to 1. The cosine grid t = cos(pi/2 (1 - u)) unmasks fewer tokens early."""
  u = jnp.linspace(0.0, 1.0, steps + 1)
  if grid == "uniform":
    return u
  if grid == "cosine":
    return jnp.cos(jnp.pi / 2 * (1.0 - u)).at[0].set(0.0).at[-1].set(1.0)
  raise ValueError(f"unknown time grid {grid!r}; choose one of {GRIDS}")


def process_logits(logits_BxLxV, settings: Settings):
  """Temperature, top-k and top-p (nucleus) -> normalised float32 log-probabilities (-inf = excluded).

  Temperature 0 puts all mass on the argmax.
  """
  logits = logits_BxLxV.astype(jnp.float32)
  if settings.temperature == 0:
    return jnp.where(jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=bool), 0.0, -jnp.inf)
  logits = logits / settings.temperature
  if settings.top_k:
    kth_largest = jax.lax.top_k(logits, min(settings.top_k, logits.shape[-1]))[0][..., -1:]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  if settings.top_p < 1.0:
    # Keep the smallest set of most likely tokens whose mass reaches top_p: a token stays if the mass
    # strictly above it is below top_p.
    sorted_desc = -jnp.sort(-log_probs, axis=-1)
    mass_above = jnp.cumsum(jnp.exp(sorted_desc), axis=-1) - jnp.exp(sorted_desc)
    cutoff = jnp.min(jnp.where(mass_above < settings.top_p, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    log_probs = jax.nn.log_softmax(jnp.where(log_probs < cutoff, -jnp.inf, log_probs), axis=-1)
  return log_probs


def categorical(key, log_probs):
  """Exact-in-float32 categorical draw over the last axis (Gumbel-max with ~32 of dynamic range)."""
  return jax.random.categorical(key, log_probs, axis=-1, mode="high").astype(jnp.int32)


def uniform(key, shape):
  """Uniform in (0, 1) with 24 significant bits at every scale (jax's uniform has a 2^-23 grid, so
  P(u < p) is off by up to 12% at p = 1e-6)."""
  bits = jax.random.bits(key, shape, jnp.uint32)
  u = (bits.astype(jnp.float32) + 0.5) * 2.0**-32
  return jnp.minimum(u, jnp.nextafter(jnp.float32(1), jnp.float32(0)))


def record_order(order_BxL, old_z_BxL, new_z_BxL, clock, vocab_size: int):
  """Marks the positions filled between old and new z with the sampler's clock."""
  return jnp.where((old_z_BxL == vocab_size) & (new_z_BxL != vocab_size), clock, order_BxL)


