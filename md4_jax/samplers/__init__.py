"""Samplers: pure functions over a `denoise(z_BxL, t_B) -> logits_BxLxV` callable.

`sample(denoise, key, schedule, z_BxL, settings)` fills every mask id in z_BxL
(id = vocab_size) and never changes any other token, so a prompt, a suffix or
any spans are clamped by writing them into z_BxL (rows may differ). Everything
jits with static shapes and `lax` loops and returns (tokens_BxL, NFE), NFE
being the number of network calls actually made. See docs/sampling.md.

Draws are exact in float32: tokens come from `jax.random.categorical` in its
high-dynamic-range mode, so a draw out of a (vocabulary + mask) distribution
whose token probabilities are ~1e-7 (one of 10^4 steps) keeps its relative
frequencies; Bernoulli draws compare against a uniform with 24 significant
bits at every scale.
"""

import dataclasses

import jax
import jax.numpy as jnp

NAMES = ("ancestral", "mean", "exact", "confidence", "semi_ar")
INNER = ("ancestral", "mean", "exact", "confidence")  # what semi_ar runs inside each block
GRIDS = ("cosine", "uniform")


@dataclasses.dataclass(frozen=True)
class Settings:
  """The `sampler.*` config keys that change what is drawn (see configs/base.py for each)."""
  name: str = "ancestral"
  steps: int = 128  # grid steps: ancestral, mean, confidence; semi_ar: all blocks together
  grid: str = "cosine"
  temperature: float = 1.0  # 0 = argmax
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1 = off
  tokens_per_call: int = 1  # exact: unmasking events per network call
  choice_temperature: float = 4.5  # confidence: Gumbel noise on log-confidence, annealed to 0
  block_length: int = 0  # semi_ar: positions per left-to-right block
  inner: str = "confidence"  # semi_ar: the sampler within a block
  cache: bool = True  # reuse the last output when the input did not change (time-independent networks)
  guidance: float = 0.0  # classifier-free guidance scale w (class-conditional models); 0 = none

  @classmethod
  def from_config(cls, sampler_cfg) -> "Settings":
    return cls(**{field.name: sampler_cfg[field.name] for field in dataclasses.fields(cls)})


def time_grid(steps: int, grid: str = "cosine"):
  """[steps + 1] times from 0 to 1. The cosine grid t = cos(pi/2 (1 - u)) unmasks fewer tokens early."""
  u = jnp.linspace(0.0, 1.0, steps + 1)
  if grid == "uniform":
    return u
  if grid == "cosine":
    return jnp.cos(jnp.pi / 2 * (1.0 - u)).at[0].set(0.0).at[-1].set(1.0)
  raise ValueError(f"unknown time grid {grid!r}; choose one of {GRIDS}")


def semi_ar_blocks(block_length: int, steps: int, length: int) -> int:
  """The number of semi_ar blocks; ValueError unless the blocks tile the length and share the steps evenly."""
  if block_length <= 0 or length % block_length:
    raise ValueError(f"sampler.block_length={block_length} must divide the sequence length {length} "
                     "(data.seq_len) for sampler.name='semi_ar'")
  num_blocks = length // block_length
  if steps % num_blocks:
    raise ValueError(f"sampler.steps={steps} must be a multiple of the {num_blocks} semi_ar blocks "
                     f"(sequence length / block_length), e.g. {num_blocks * 8}")
  return num_blocks


def sample(denoise, key, schedule, z_BxL, settings: Settings, *, vocab_size: int, time_dependent: bool = True,
           return_order: bool = False):
  """Fills the mask ids of z_BxL (tokens elsewhere are clamped). Returns (tokens_BxL, NFE as an int32 scalar),
  and with `return_order` also order_BxL: the sampler's clock (grid step or unmasking event, counted
  from 1 across semi_ar blocks) at which each position was filled, 0 for given tokens. Filled tokens
  never change, so `order` replays the reverse process exactly (the image strips draw it).

  `time_dependent=False` declares that `denoise` ignores t, which lets `settings.cache` skip a call whose
  input z equals the previous call's.
  """
  if settings.name not in NAMES:
    raise ValueError(f"unknown sampler {settings.name!r}; choose one of {NAMES}")
  z_BxL = jnp.asarray(z_BxL, jnp.int32)
  order_BxL = jnp.zeros_like(z_BxL)
  blocks = [(settings, z_BxL == vocab_size)]
  if settings.name == "semi_ar":
    length = z_BxL.shape[1]
    num_blocks = semi_ar_blocks(settings.block_length, settings.steps, length)
    inner = dataclasses.replace(settings, name=settings.inner, steps=settings.steps // num_blocks)
    block_L = jnp.arange(length) // settings.block_length
    blocks = [(inner, block_L == block) for block in range(num_blocks)]  # static: left to right
  nfe = jnp.zeros((), jnp.int32)
  for index, (block_settings, in_block) in enumerate(blocks):
    block_key = key if len(blocks) == 1 else jax.random.fold_in(key, index)
    z_BxL, block_nfe, order_BxL = _sampler(block_settings.name, schedule)(
        denoise, block_key, schedule, z_BxL, (z_BxL == vocab_size) & in_block, block_settings, vocab_size,
        time_dependent, order_BxL)
    nfe += block_nfe
  return (z_BxL, nfe, order_BxL) if return_order else (z_BxL, nfe)


def record_order(order_BxL, old_z_BxL, new_z_BxL, clock, vocab_size: int):
  """Marks the positions filled between old and new z with the sampler's clock."""
  return jnp.where((old_z_BxL == vocab_size) & (new_z_BxL != vocab_size), clock, order_BxL)


def guided(denoise_labelled, label_B, null_B, scale: float):
  """Classifier-free guidance: a `denoise(z, t)` whose log-probabilities are
  (1 + w) log p(x | z, label) - w log p(x | z, null class), renormalised by the sampler.

  `denoise_labelled(z, t, label)` is the class-conditional network; both predictions come from one
  call over the doubled batch (one network call in NFE). w = 0 gives the conditional model itself.
  """

  def denoise(z_BxL, t_B):
    logits = denoise_labelled(jnp.concatenate([z_BxL, z_BxL]), jnp.concatenate([t_B, t_B]),
                              jnp.concatenate([label_B, null_B]))
    conditional, unconditional = jnp.split(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), 2)
    return (1.0 + scale) * conditional - scale * unconditional

  return denoise


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


def _grid_sampler(update):
  """A sampler that walks the time grid 1 = t_T > ... > t_0 = 0 with one network call per step, skipped
  (the last output reused) when caching is allowed and the previous step changed nothing.
  `update(key, z, is_masked, initial_count, logits, t, s, step, settings, schedule)` returns the new z."""

  def run(denoise, key, schedule, z_BxL, active_BxL, settings, vocab_size, time_dependent, order_BxL):
    steps, batch_size = settings.steps, z_BxL.shape[0]
    times = time_grid(steps, settings.grid)
    reuse_allowed = settings.cache and not time_dependent
    initial_B = active_BxL.sum(-1)
    clock_start = jnp.max(order_BxL)  # semi_ar: later blocks continue the clock

    def step(i, carry):
      z_BxL, last_logits, changed, nfe, order_BxL = carry
      t, s = times[steps - i], times[steps - i - 1]
      call = lambda: denoise(z_BxL, jnp.full((batch_size,), t)).astype(jnp.float32)  # noqa: E731
      logits = jax.lax.cond(changed, call, lambda: last_logits) if reuse_allowed else call()
      is_masked_BxL = (z_BxL == vocab_size) & active_BxL
      new_z = update(jax.random.fold_in(key, i), z_BxL, is_masked_BxL, initial_B, logits, t, s, i, settings,
                     schedule)
      order_BxL = record_order(order_BxL, z_BxL, new_z, clock_start + i + 1, vocab_size)
      return (new_z, logits, jnp.any(new_z != z_BxL), nfe + (changed | (not reuse_allowed)).astype(jnp.int32),
              order_BxL)

    start = (z_BxL, jnp.zeros(z_BxL.shape + (vocab_size,), jnp.float32), jnp.array(True), jnp.zeros((), jnp.int32),
             order_BxL)
    z_BxL, _, _, nfe, order_BxL = jax.lax.fori_loop(0, steps, step, start)
    return z_BxL, nfe, order_BxL

  return run


def _unmask_prob(schedule, t, s):
  """P(a position masked at t is unmasked at s < t) = (alpha_s - alpha_t) / (1 - alpha_t); 1 at s = 0,
  where the reverse process ends fully unmasked (alpha_0 = 1 - eps is only a numerical guard).
  A scalar, or [V] (one per token it would become) for per-token schedules (GenMD4)."""
  return jnp.where(s == 0, 1.0, (schedule.alpha(s) - schedule.alpha(t)) / schedule.mask_prob(t))


def _count_mask_prob(schedule, t):
  """The share of positions masked at t that count-based samplers (confidence) keep: per-token
  schedules use their vocabulary mean."""
  return schedule.mean_mask_prob(t) if getattr(schedule, "per_token", False) else schedule.mask_prob(t)


def _ancestral_update(key, z_BxL, is_masked_BxL, initial_B, logits, t, s, i, settings, schedule):
  """MD4's step: one draw over (vocabulary + stay masked) with probabilities (p * q, 1 - q); with
  per-token q_v (GenMD4), (p_v q_v, sum_v p_v (1 - q_v))."""
  q = _unmask_prob(schedule, t, s)
  log_probs = process_logits(logits, settings)
  if jnp.ndim(q):
    stay = jax.nn.logsumexp(log_probs + jnp.log1p(-q), axis=-1, keepdims=True)
  else:
    stay = jnp.broadcast_to(jnp.log1p(-q), log_probs.shape[:-1] + (1,))
  choice_BxL = categorical(key, jnp.concatenate([log_probs + jnp.log(q), stay], axis=-1))
  unmask_BxL = is_masked_BxL & (choice_BxL < log_probs.shape[-1])
  return jnp.where(unmask_BxL, choice_BxL, z_BxL)


def _mean_update(key, z_BxL, is_masked_BxL, initial_B, logits, t, s, i, settings, schedule):
  """The same step in two stages: draw x0 at every position, then unmask each with probability q (q_x0)."""
  token_key, unmask_key = jax.random.split(key)
  x0_BxL = categorical(token_key, process_logits(logits, settings))
  q = _unmask_prob(schedule, t, s)
  unmask_BxL = is_masked_BxL & (uniform(unmask_key, z_BxL.shape) < (q[x0_BxL] if jnp.ndim(q) else q))
  return jnp.where(unmask_BxL, x0_BxL, z_BxL)


def _rank_desc(score_BxL):
  """Rank of each entry in its row, 0 = largest (ties: leftmost first)."""
  return jnp.argsort(jnp.argsort(-score_BxL, axis=-1, stable=True), axis=-1, stable=True)


def _confidence_update(key, z_BxL, is_masked_BxL, initial_B, logits, t, s, i, settings, schedule):
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
  keep_masked_B = jnp.where(s == 0, 0, jnp.round(initial_B * _count_mask_prob(schedule, s)
                                                 / _count_mask_prob(schedule, 1.0)))
  unmask_count_B = jnp.maximum(is_masked_BxL.sum(-1) - keep_masked_B.astype(jnp.int32), 0)
  unmask_BxL = is_masked_BxL & (_rank_desc(score_BxL) < unmask_count_B[:, None])
  return jnp.where(unmask_BxL, x0_BxL, z_BxL)


def time_of_mask_prob(schedule, mask_prob_B, iterations: int = 32):
  """t in [0, 1] with schedule.mask_prob(t) = mask_prob_B, by bisection (mask_prob increases with t)."""

  def halve(_, bounds):
    low, high = bounds
    middle = (low + high) / 2
    below = schedule.mask_prob(middle) < mask_prob_B
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


def _sampler(name: str, schedule):
  if name == "exact" and getattr(schedule, "per_token", False):
    from md4_jax.samplers import thinning  # noqa: PLC0415 (thinning builds on this module's draws)
    return thinning.exact
  return _SAMPLERS[name]


_SAMPLERS = {"ancestral": _grid_sampler(_ancestral_update), "mean": _grid_sampler(_mean_update),
             "confidence": _grid_sampler(_confidence_update), "exact": _exact}
