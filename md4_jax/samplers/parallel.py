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

Every row advances on its own (`decode`, sampler.parallel.rows='own'): its current block is the leftmost one it
has not finished, and a call serves each unfinished row at its own block, so a batch costs its slowest row's
calls, not the sum over blocks of each block's slowest row ('together', where a row that filled its block waits
for the others); a finished row waits. A row draws what it would draw alone (`row_keys`), either way. Block
diffusion runs `decode` over its blocks' sub-blocks, with its own calls and keys (objectives/bd3_rows.py).

Caches (sampler.kv_cache; parallel_cache.py, a transformer's `extend`): a refresh call runs the whole sequence
and keeps every position's keys and values, at the block's first call and then every
sampler.parallel.cache_refresh calls (0: only the first). Between refreshes, 'prefix' runs the block and everything after it against the
cached positions before the block; 'dual' runs the block alone against the cached positions before and after
it. Other tokens change while the cache stays, and a bidirectional model's keys depend on them, so both are
approximations; cache_refresh = 1 refreshes every call, which is the uncached sampler (tested).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections

from md4_jax.samplers.draws import categorical, process_logits, record_order, uniform
from md4_jax.samplers.exact import time_of_mask_prob

CACHES = ("prefix", "dual")  # sampler.kv_cache values this sampler implements
FALLBACKS = ("confidence", "random")  # sampler.parallel.fallback: the one position a call unmasks when none passes
ROWS = ("own", "together")  # sampler.parallel.rows: how a batch's rows move through their blocks


def config_group() -> ml_collections.ConfigDict:
  """sampler.parallel.*: gathered by configs/base.py (its blocks: sampler.block_length, its cache: sampler.kv_cache)."""
  group = ml_collections.ConfigDict()
  group.threshold = 0.9  # unmask every token whose confidence exceeds it (at least one per call)
  # "random" (uniform, MD4's order; keeps unconditional samples' entropy) | "confidence" (Fast-dLLM / LLaDA)
  group.fallback = "random"  # the one position unmasked when none passes the threshold
  group.cache_refresh = 0  # with kv_cache "prefix" / "dual": whole-sequence refresh every this many calls; 0 = per block
  # "own": each row moves to its next block as soon as it has filled one (a batch costs its slowest row's calls);
  # "together": rows that filled a block wait for the others (calls: each block's slowest row, summed; the caches'
  # refreshes coincide, which is cheaper when rows need about the same calls per block). Same draws either way.
  group.rows = "own"  # how a batch's rows move through their blocks: "own" | "together"
  return group


def check_config(config, length: int) -> None:
  """Its keys, and its blocks against the length it fills (inside BD3: each block of diffusion.bd3.block_size)."""
  own = config.sampler.parallel
  if not 0.0 < own.threshold <= 1.0:
    raise ValueError(f"sampler.parallel.threshold={own.threshold} must be in (0, 1] (1 = one token per call)")
  if own.fallback not in FALLBACKS:
    raise ValueError(f"sampler.parallel.fallback={own.fallback!r}; choose one of {FALLBACKS}")
  if own.rows not in ROWS:
    raise ValueError(f"sampler.parallel.rows={own.rows!r}; choose one of {ROWS}")
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


def _threshold_update(key, z_C, masked_C, logits_CxV, settings):
  """One row's call: draws every masked position; keeps those whose confidence passes the threshold, and one more:
  a uniformly chosen one (fallback 'random', the exact sampler's order) or the most confident ('confidence')."""
  token_key, position_key = jax.random.split(key)
  x0_C = categorical(token_key, process_logits(logits_CxV, settings))
  probs_CxV = jax.nn.softmax(logits_CxV.astype(jnp.float32), axis=-1)
  confidence_C = jnp.where(masked_C, jnp.take_along_axis(probs_CxV, x0_C[:, None], axis=-1)[:, 0], -1.0)
  if settings.fallback == "random":
    choice_C = jnp.where(masked_C, uniform(position_key, z_C.shape), -1.0)
  else:
    choice_C = confidence_C
  one_C = jax.nn.one_hot(jnp.argmax(choice_C), z_C.shape[0], dtype=bool)
  unmask_C = masked_C & ((confidence_C > settings.threshold) | one_C)
  return jnp.where(unmask_C, x0_C, z_C)


def rows_slice(x_BxLx, start_B, size: int):
  """x_BxLx[b, start_B[b]:start_B[b] + size] for every row: [B, size, ...]."""
  return jax.vmap(lambda x, start: jax.lax.dynamic_slice_in_dim(x, start, size))(x_BxLx, start_B)


def on_some_rows(picked_B, run, state):
  """`run(rows_R, state)` over the smallest power-of-two number R of rows (at most B) that holds every picked row;
  rows_R indexes them, the picked rows first (slice(None) when R = B: no gather), and `run` must change only the
  picked among them. Rows rarely need a pass at the same call (they sit in different blocks), and a pass over all
  B rows costs B: one compiled branch per R (`lax.switch`). At least one row must be picked."""
  batch_size = picked_B.shape[0]
  sizes = sorted({min(2**power, batch_size) for power in range(batch_size.bit_length() + 1)})
  picked_first_B = jnp.argsort(~picked_B, stable=True)
  rows_of = lambda rows: picked_first_B[:rows] if rows < batch_size else slice(None)  # noqa: E731
  branches = [functools.partial(lambda state, rows: run(rows_of(rows), state), rows=rows) for rows in sizes]
  return jax.lax.switch(jnp.searchsorted(jnp.asarray(sizes), jnp.sum(picked_B)), branches, state)


def row_keys(key, batch_size: int):
  """[B] each row's key: fold_in(key, row), or `key` itself when it already holds one key per row (to draw a row
  alone as it is drawn in a batch). A row's draws depend on its key only, not on the other rows."""
  if key.shape == (batch_size,):
    return key
  return jax.vmap(lambda row: jax.random.fold_in(key, row))(jnp.arange(batch_size))


def decode(call, keys_B, z_BxL, active_BxL, settings, vocab_size, order_BxL, cache=(), *,
           block_key=jax.random.fold_in, stopped=None):
  """The rows' blocks in turn: a row's current block is the leftmost one still holding a masked active position,
  and each loop step is one call that serves every row whose turn it is (settings.rows 'own': every unfinished
  row, at its own block; 'together': those in the batch's leftmost unfinished block); the others wait.

  Returns (tokens_BxL, NFE, order_BxL, cache). `call(z_BxL, start_B, calls_B, served_B, cache) -> (logits_BxCxV
  of each row's block, network passes, cache)`;
  calls_B counts each row's calls in its current block. Row b's c-th call in block k draws with
  fold_in(block_key(keys_B[b], k), c), so a row draws what it draws alone, whichever way rows move (tested).
  order_BxL records each row's own clock: its calls so far (after the clock order_BxL had reached).
  stopped(z_BxL) -> [B]: rows that stop with positions still masked (block diffusion's end of text)."""
  batch_size, length = z_BxL.shape
  size = settings.block_length or length
  if length % size:
    raise ValueError(f"sampler.block_length={size} must divide the sequence length {length} for "
                     "sampler.name='parallel'")
  clock_start = jnp.max(order_BxL)
  masked_of = lambda z_BxL: (z_BxL == vocab_size) & active_BxL  # noqa: E731
  live_of = lambda z_BxL: jnp.any(masked_of(z_BxL), axis=1) & ~(stopped(z_BxL) if stopped else False)  # noqa: E731

  def one_call(carry):
    z_BxL, nfe, block_B, calls_B, clock_B, order_BxL, cache = carry
    masked_BxL = masked_of(z_BxL)
    live_B = live_of(z_BxL)
    now_B = jnp.where(live_B, jnp.argmax(masked_BxL, axis=1) // size, 0)  # a finished row idles at block 0
    served_B = live_B
    if settings.rows == "together":
      served_B = live_B & (now_B == jnp.min(jnp.where(live_B, now_B, length)))
    calls_B = jnp.where(now_B == block_B, calls_B, 0)
    start_B = now_B * size
    logits_BxCxV, passes, cache = call(z_BxL, start_B, calls_B, served_B, cache)
    call_keys_B = jax.vmap(lambda key, block, calls: jax.random.fold_in(block_key(key, block), calls))(
        keys_B, now_B, calls_B)
    z_BxC = jax.vmap(_threshold_update, in_axes=(0, 0, 0, 0, None))(
        call_keys_B, rows_slice(z_BxL, start_B, size), rows_slice(masked_BxL & served_B[:, None], start_B, size),
        logits_BxCxV, settings)
    new_z = jax.vmap(jax.lax.dynamic_update_slice_in_dim, in_axes=(0, 0, 0, None))(z_BxL, z_BxC, start_B, 0)
    clock_B = clock_B + served_B
    order_BxL = record_order(order_BxL, z_BxL, new_z, clock_start + clock_B[:, None], vocab_size)
    return new_z, nfe + passes, now_B, calls_B + served_B, clock_B, order_BxL, cache

  rows = jnp.zeros(batch_size, jnp.int32)
  z_BxL, nfe, _, _, _, order_BxL, cache = jax.lax.while_loop(
      lambda carry: jnp.any(live_of(carry[0])), one_call,
      (z_BxL, jnp.zeros((), jnp.int32), rows - 1, rows, rows, order_BxL, cache))
  return z_BxL, nfe, order_BxL, cache


def masked_time(schedule, z_BxL, vocab_size: int):
  """[B] the time whose mask probability is the share of each row still masked."""
  return time_of_mask_prob(schedule, jnp.mean(z_BxL == vocab_size, axis=-1).astype(jnp.float32))


def _parallel(denoise, key, schedule, z_BxL, active_BxL, settings, vocab_size, time_dependent, order_BxL):
  """No cache: every call runs the network over the whole sequence."""
  del time_dependent
  z_BxL = jnp.asarray(z_BxL, jnp.int32)
  size = settings.block_length or z_BxL.shape[1]

  def call(z_BxL, start_B, calls_B, served_B, cache):
    del calls_B, served_B
    logits_BxLxV = denoise(z_BxL, masked_time(schedule, z_BxL, vocab_size))
    return rows_slice(logits_BxLxV, start_B, size).astype(jnp.float32), 1, cache

  return decode(call, row_keys(key, z_BxL.shape[0]), z_BxL, active_BxL, settings, vocab_size, order_BxL)[:3]


SAMPLERS = {"parallel": _parallel}
