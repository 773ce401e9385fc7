"""`parallel`: Fast-dLLM's confidence-aware parallel decoding, block by block, with or without an approximate
KV cache (Wu et al. 2025).

Blocks of sampler.block_length positions (0: the whole sequence as one block) are filled left to right. Each
network call draws every masked position of the block (temperature, top-k, top-p) and unmasks those whose
confidence, the model's probability of the drawn token, exceeds sampler.parallel.threshold, and always one more: a
uniformly chosen masked position (sampler.parallel.fallback='random', the default: the exact sampler's order, which
keeps unconditional samples' entropy; benchmarks/RESULTS.md) or the most confident one ('confidence',
Fast-dLLM's rule). Threshold 1.0 is one token per call: MD4's random order block by block, or LLaDA's
low-confidence remasking. Calls go on until the block is full, so NFE depends on the model. A time-conditioned
network is called at the time whose mask probability equals the share of the row still masked.

Caches (sampler.kv_cache; `sample_cached`, a transformer's `extend`): a refresh call runs the whole sequence
and keeps every position's keys and values, at the block's first call and then every
sampler.parallel.cache_refresh calls (0: only the first). Between refreshes, 'prefix' runs the block and everything after it against the
cached positions before the block; 'dual' runs the block alone against the cached positions before and after
it. Other tokens change while the cache stays, and a bidirectional model's keys depend on them, so both are
approximations; cache_refresh = 1 refreshes every call, which is the uncached sampler (tested).
"""

import jax
import jax.numpy as jnp
import ml_collections

from md4_jax.samplers.draws import categorical, process_logits, record_order, uniform
from md4_jax.samplers.exact import time_of_mask_prob

CACHES = ("prefix", "dual")  # sampler.kv_cache values this sampler implements
FALLBACKS = ("confidence", "random")  # sampler.parallel.fallback: the one position a call unmasks when none passes


def config_group() -> ml_collections.ConfigDict:
  """sampler.parallel.*: gathered by configs/base.py (its blocks: sampler.block_length, its cache: sampler.kv_cache)."""
  group = ml_collections.ConfigDict()
  group.threshold = 0.9  # unmask every token whose confidence exceeds it (at least one per call)
  # "random" (uniform, MD4's order; keeps unconditional samples' entropy) | "confidence" (Fast-dLLM / LLaDA)
  group.fallback = "random"  # the one position unmasked when none passes the threshold
  group.cache_refresh = 0  # with kv_cache "prefix" / "dual": whole-sequence refresh every this many calls; 0 = per block
  return group


def check_config(config, length: int) -> None:
  """Its keys, and its blocks against the length it fills (inside BD3: each block of diffusion.bd3.block_size)."""
  own = config.sampler.parallel
  if not 0.0 < own.threshold <= 1.0:
    raise ValueError(f"sampler.parallel.threshold={own.threshold} must be in (0, 1] (1 = one token per call)")
  if own.fallback not in FALLBACKS:
    raise ValueError(f"sampler.parallel.fallback={own.fallback!r}; choose one of {FALLBACKS}")
  if own.cache_refresh < 0:
    raise ValueError(f"sampler.parallel.cache_refresh={own.cache_refresh} must be >= 0 (0 = refresh at each block's "
                     "start)")
  bd3 = config.objective == "bd3"
  length = config.diffusion.bd3.block_size if bd3 else length
  block_length = config.sampler.block_length
  if block_length < 0 or (block_length and length % block_length):
    raise ValueError(f"sampler.block_length={block_length} must divide {length} "
                     f"({'diffusion.bd3.block_size' if bd3 else 'data.seq_len'}) for sampler.name='parallel'; "
                     "0 = one block")


def uses_blocks(settings) -> bool:
  """Whether sampler.block_length means this sampler's blocks (name='parallel', not semi_ar's)."""
  return settings.name == "parallel"


def _blocks(settings, length: int):
  """[(start, size), ...] left to right."""
  size = settings.block_length or length
  if length % size:
    raise ValueError(f"sampler.block_length={size} must divide the sequence length {length} for "
                     "sampler.name='parallel'")
  return [(start, size) for start in range(0, length, size)]


def _threshold_update(key, z_BxC, masked_BxC, logits_BxCxV, settings):
  """Draws every masked position; keeps those whose confidence passes the threshold, and one more per row: a
  uniformly chosen one (fallback 'random', the exact sampler's order) or the most confident ('confidence')."""
  token_key, position_key = jax.random.split(key)
  x0_BxC = categorical(token_key, process_logits(logits_BxCxV, settings))
  probs_BxCxV = jax.nn.softmax(logits_BxCxV.astype(jnp.float32), axis=-1)
  confidence_BxC = jnp.where(masked_BxC, jnp.take_along_axis(probs_BxCxV, x0_BxC[..., None], axis=-1)[..., 0], -1.0)
  if settings.fallback == "random":
    choice_BxC = jnp.where(masked_BxC, uniform(position_key, z_BxC.shape), -1.0)
  else:
    choice_BxC = confidence_BxC
  one_BxC = jax.nn.one_hot(jnp.argmax(choice_BxC, axis=-1), z_BxC.shape[1], dtype=bool)
  unmask_BxC = masked_BxC & ((confidence_BxC > settings.threshold) | one_BxC)
  return jnp.where(unmask_BxC, x0_BxC, z_BxC)


def _decode(window, key, z_BxL, active_BxL, settings, vocab_size, order_BxL):
  """The blocks in turn; `window(start, size) -> (cache, call)` with call(z_BxL, call_in_block, cache) ->
  (logits_BxCxV of the block, cache)."""
  clock_start = jnp.max(order_BxL)
  nfe = jnp.zeros((), jnp.int32)
  for index, (start, size) in enumerate(_blocks(settings, z_BxL.shape[1])):
    block_key = jax.random.fold_in(key, index)
    active_BxC = active_BxL[:, start:start + size]
    masked = lambda z_BxL: (z_BxL[:, start:start + size] == vocab_size) & active_BxC  # noqa: E731
    cache, call = window(start, size)

    def one_call(carry, start=start, size=size, call=call, masked=masked, block_key=block_key):
      z_BxL, nfe, calls, order_BxL, cache = carry
      logits_BxCxV, cache = call(z_BxL, calls, cache)
      z_BxC = _threshold_update(jax.random.fold_in(block_key, calls), z_BxL[:, start:start + size], masked(z_BxL),
                                logits_BxCxV, settings)
      new_z = z_BxL.at[:, start:start + size].set(z_BxC)
      order_BxL = record_order(order_BxL, z_BxL, new_z, clock_start + nfe + 1, vocab_size)
      return new_z, nfe + 1, calls + 1, order_BxL, cache

    z_BxL, nfe, _, order_BxL, _ = jax.lax.while_loop(
        lambda carry, masked=masked: jnp.any(masked(carry[0])), one_call,
        (z_BxL, nfe, jnp.zeros((), jnp.int32), order_BxL, cache))
  return z_BxL, nfe, order_BxL


def _masked_time(schedule, z_BxL, vocab_size: int):
  """[B] the time whose mask probability is the share of each row still masked."""
  return time_of_mask_prob(schedule, jnp.mean(z_BxL == vocab_size, axis=-1).astype(jnp.float32))


def _parallel(denoise, key, schedule, z_BxL, active_BxL, settings, vocab_size, time_dependent, order_BxL):
  """No cache: every call runs the network over the whole sequence."""
  del time_dependent

  def window(start, size):
    call = lambda z_BxL, calls, cache: (  # noqa: E731
        denoise(z_BxL, _masked_time(schedule, z_BxL, vocab_size))[:, start:start + size].astype(jnp.float32), cache)
    return (), call

  return _decode(window, key, jnp.asarray(z_BxL, jnp.int32), active_BxL, settings, vocab_size, order_BxL)


def sample_cached(module, key, schedule, z_BxL, settings, vocab_size: int):
  """(tokens_BxL, NFE, order_BxL): `parallel` over the block-wise approximate cache settings.kv_cache."""
  z_BxL = jnp.asarray(z_BxL, jnp.int32)
  batch_size, length = z_BxL.shape
  positions_L = jnp.arange(length)
  prefix, refresh_every = settings.kv_cache == "prefix", settings.cache_refresh

  def window(start, size):
    end = start + size
    last = length if prefix else end  # the chunk a cached call runs: prefix, the block and all after it
    sees_L = positions_L < start if prefix else (positions_L < start) | (positions_L >= end)

    def call(z_BxL, calls, cache):
      t_B = _masked_time(schedule, z_BxL, vocab_size)

      def refresh(cache):
        h_BxLxD, kv = module.extend(z_BxL, positions_L, t_B=t_B)
        return module.head_logits(h_BxLxD[:, start:end]), tuple(x.astype(c.dtype) for x, c in zip(kv, cache))

      def reuse(cache):
        h_BxCxD, _ = module.extend(z_BxL[:, start:last], positions_L[start:last], cache, sees_L, t_B=t_B)
        return module.head_logits(h_BxCxD[:, :size]), cache

      refresh_now = calls % refresh_every == 0 if refresh_every else calls == 0
      return jax.lax.cond(refresh_now, refresh, reuse, cache)

    return module.empty_cache(batch_size, length), call

  return _decode(window, key, z_BxL, z_BxL == vocab_size, settings, vocab_size, jnp.zeros_like(z_BxL))


SAMPLERS = {"parallel": _parallel}
