"""The `parallel` sampler's approximate KV caches (sampler.kv_cache = 'prefix' | 'dual'), row by row.

Each row keeps its own cache of every position's keys and values, refreshed by a whole-sequence pass at its
block's first call and then every sampler.parallel.cache_refresh calls (0: only the first). Between refreshes a
row's call runs, against its cached positions before its block ('prefix': the block and everything after it) or
before and after it ('dual': the block alone). Rows sit in different blocks, so a loop step runs at most two
passes: the whole sequence for the rows that refresh now (gathered into the smallest power-of-two batch that holds
them, as they rarely refresh together), the cached pass for the others (each only when some row needs it); a row
takes its logits from its own pass.

'dual' runs each row's block at its own positions (a vmap over rows). 'prefix' runs one chunk for the batch, from
the earliest block a reusing row is in to the end (one compiled pass per possible start, `lax.switch`): a row
further on sees the chunk's keys only from its own block onwards and its cache before, as it would alone.
"""

import functools

import jax
import jax.numpy as jnp

from md4_jax.samplers.parallel import decode, masked_time, on_some_rows, row_keys, rows_slice


def cached_call(module, schedule, settings, vocab_size: int, batch_size: int, length: int):
  """`decode`'s call over `module.extend` with the cache settings.kv_cache."""
  size = settings.block_length or length
  positions_L = jnp.arange(length)
  prefix, refresh_every = settings.kv_cache == "prefix", settings.cache_refresh
  no_logits = jnp.zeros((batch_size, size, vocab_size), jnp.float32)

  def row_pass(z_L, start, cached_k, cached_v, t, *, low, chunk):
    """One row's cached pass over positions [low, low + chunk) (low may be traced): its block's logits."""
    positions_C = low + jnp.arange(chunk)
    if prefix:  # the cache before the block, the chunk from the block on
      sees_T = jnp.concatenate([positions_L < start, positions_C >= start])
    else:  # the cache around the block, the block itself
      sees_T = jnp.concatenate([(positions_L < start) | (positions_L >= start + size), jnp.ones(chunk, bool)])
    h_1xCxD, _ = module.extend(jax.lax.dynamic_slice_in_dim(z_L, low, chunk)[None], positions_C,
                               (cached_k[:, None], cached_v[:, None]), sees_T, t_B=t[None])
    return module.head_logits(jax.lax.dynamic_slice_in_dim(h_1xCxD[0], start - low, size)).astype(jnp.float32)

  over_rows = lambda fn: jax.vmap(fn, in_axes=(0, 0, 1, 1, 0))  # noqa: E731  (cache: [layers, B, L, G, K])

  def reuse(z_BxL, start_B, reuse_B, t_B, cache):
    if not prefix:
      return over_rows(lambda z_L, start, *rest: row_pass(z_L, start, *rest, low=start, chunk=size))(
          z_BxL, start_B, *cache, t_B)
    first_block = jnp.min(jnp.where(reuse_B, start_B, length - size)) // size
    branches = [over_rows(functools.partial(row_pass, low=block * size, chunk=length - block * size))
                for block in range(length // size)]
    return jax.lax.switch(first_block, branches, z_BxL, start_B, *cache, t_B)

  def call(z_BxL, start_B, calls_B, served_B, cache):
    t_B = masked_time(schedule, z_BxL, vocab_size)
    refresh_B = served_B & (calls_B % refresh_every == 0 if refresh_every else calls_B == 0)
    reuse_B = served_B & ~refresh_B

    def refresh_rows(picked_R, state):
      """The whole-sequence pass over the rows picked_R, the refreshing ones among them."""
      logits_BxCxV, cache = state
      h_RxLxD, kv = module.extend(z_BxL[picked_R], positions_L, t_B=t_B[picked_R])
      logits_RxCxV = module.head_logits(rows_slice(h_RxLxD, start_B[picked_R], size)).astype(jnp.float32)
      keep = refresh_B[picked_R][None, :, None, None, None]
      cache = tuple(old.at[:, picked_R].set(jnp.where(keep, new.astype(old.dtype), old[:, picked_R]))
                    for new, old in zip(kv, cache))
      return logits_BxCxV.at[picked_R].set(logits_RxCxV), cache

    refresh = lambda cache: on_some_rows(refresh_B, refresh_rows, (no_logits, cache))  # noqa: E731
    refreshed_BxCxV, cache = jax.lax.cond(jnp.any(refresh_B), refresh, lambda cache: (no_logits, cache), cache)
    reused_BxCxV = jax.lax.cond(jnp.any(reuse_B), reuse, lambda *_: no_logits, z_BxL, start_B, reuse_B, t_B, cache)
    passes = jnp.any(refresh_B).astype(jnp.int32) + jnp.any(reuse_B).astype(jnp.int32)
    return jnp.where(refresh_B[:, None, None], refreshed_BxCxV, reused_BxCxV), passes, cache

  return call


def sample_cached(module, key, schedule, z_BxL, settings, vocab_size: int):
  """(tokens_BxL, NFE, order_BxL): `parallel` over the block-wise approximate cache settings.kv_cache. NFE counts
  passes: a loop step where some rows refresh and others reuse their cache runs two."""
  z_BxL = jnp.asarray(z_BxL, jnp.int32)
  batch_size, length = z_BxL.shape
  call = cached_call(module, schedule, settings, vocab_size, batch_size, length)
  return decode(call, row_keys(key, batch_size), z_BxL, z_BxL == vocab_size, settings, vocab_size,
                jnp.zeros_like(z_BxL), module.empty_cache(batch_size, length))[:3]
