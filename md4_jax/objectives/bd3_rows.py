"""Block diffusion drawn by the `parallel` sampler with every row on its own (objective='bd3',
sampler.name='parallel'): a row moves to its next block as soon as it has filled one, so a batch costs its
slowest row's calls, not the sum over blocks of each block's slowest row (sampler.parallel.rows; 'together'
keeps the rows in step, with the same draws).

The segment's sub-blocks (sampler.block_length, 0 = one per block of diffusion.bd3.block_size) go through
`parallel.decode`; a call scores each served row's sub-block in its own block:
- kv_cache='none': one pass over the served rows' whole sequences under the block-causal mask (a row's later
  blocks are hidden from its current one, wherever the other rows are);
- kv_cache='exact': each served row's block alone against its own cache of finished blocks (the slots of
  `cache_slot`), in one batched pass with each row's positions and visibility. Before a row's call, the blocks it
  has finished since its last call (more than one where a prompt filled whole blocks) are written into its cache,
  one pass per block over their clean tokens, over the rows that need it; what is finished when the segment ends
  is written at the end. Same function as 'none', so the same draws (tested).
Passes over some of the rows run at the smallest power-of-two batch that holds them (`on_some_rows`): once the
quicker rows are done the slowest runs alone.
Row b's c-th call in sub-block j of block i draws with fold_in(fold_in(fold_in(key_b, i), j), c), key_b =
fold_in(key, b) (or key[b] when key holds one key per row), so a row draws what it draws alone. Order is each
row's own clock, from `clock` on. With sampler.stop_at_end a row stops once a finished block holds end-of-text.
"""

import dataclasses

import jax
import jax.numpy as jnp

from md4_jax.core import shifted
from md4_jax.samplers.parallel import decode, masked_time, on_some_rows, row_keys, rows_slice


def cache_slot(index, block_size: int, trained_length: int):
  """Block `index`'s slot in a cache of trained_length positions (blocks take the slots in turn): (its first
  position, [trained_length] bool: the slots holding the blocks it sees, the trained_length / block_size - 1
  before it, or all earlier ones at the start)."""
  slots = trained_length // block_size
  slot_S = jnp.arange(trained_length) // block_size
  return (index % slots) * block_size, (slot_S < index) & (slot_S != index % slots)


def finished_blocks(z_BxS, block_size: int, mask_id: int):
  """[B] how many of each row's leading blocks hold no masked position."""
  masked_BxS = z_BxS == mask_id
  return jnp.where(jnp.any(masked_BxS, axis=1), jnp.argmax(masked_BxS, axis=1) // block_size,
                   z_BxS.shape[1] // block_size)


def sample_segment(objective, whole_sequence, key, z_BxS, settings, *, module, first_block, cache, total_length: int,
                   clock=0):
  """`BlockDiffusion.sample_segment` for sampler.name='parallel': (tokens_BxS, NFE, order_BxS, cache).
  whole_sequence(z_BxS, t_B): the block-causal network over the segment (kv_cache='none')."""
  batch_size, length = z_BxS.shape
  size, mask_id = objective.block_size, objective.vocab_size
  trained_length, shift = int(objective.config.data.seq_len), bool(objective.config.diffusion.shift)
  sub = settings.block_length or size  # the parallel sampler's blocks inside a BD3 block
  settings = dataclasses.replace(settings, block_length=sub)
  end_id = settings.end_id if settings.stop_at_end else -1

  def block_key(row_key, sub_block):
    """A row's key for sub-block `sub_block` of the segment: its block in the sequence, then its place there."""
    block_key = row_key if total_length == size else jax.random.fold_in(row_key, first_block + sub_block * sub // size)
    return jax.random.fold_in(block_key, sub_block % (size // sub))

  def stopped(z_BxS):
    finished_BxS = jnp.arange(length)[None] < (finished_blocks(z_BxS, size, mask_id) * size)[:, None]
    return jnp.any((z_BxS == end_id) & finished_BxS, axis=1)

  def block_inputs(z_RxS, blocks_R):
    """[R, C] each row's block blocks_R of the segment as the network reads it (shifted: opening with the token
    before it)."""
    source_RxS = shifted.shift_right(z_RxS, mask_id) if shift else z_RxS
    return rows_slice(source_RxS, blocks_R * size, size)

  def blocks_pass(z_RxS, blocks_R, cache_R):
    """The rows' blocks blocks_R against their caches, one batched pass with each row's positions and visibility:
    (h_RxCxD, the blocks' keys and values [layers, R, C, H, K])."""
    index_R = first_block + blocks_R
    positions_RxC = index_R[:, None] * size + jnp.arange(size)
    sees_RxS = jax.vmap(lambda index: cache_slot(index, size, trained_length)[1])(index_R)
    sees_RxT = jnp.concatenate([sees_RxS, jnp.ones_like(positions_RxC, bool)], axis=1)  # T = S + C
    sees_RxCxT = jnp.broadcast_to(sees_RxT[:, None], (len(index_R), size, trained_length + size))
    return module.extend(block_inputs(z_RxS, blocks_R), positions_RxC, cache_R, sees_RxCxT)

  def store(cache, blocks_B, kv, keep_B):
    """The cache with each row's block blocks_B's keys and values kv ([layers, B, C, H, K]) in its slot, where
    keep_B (a scatter of the chunks alone)."""
    cache_k, cache_v, written_B = cache
    slots_B = jax.vmap(lambda block: cache_slot(first_block + block, size, trained_length)[0])(blocks_B)
    chunk = (slice(None), jnp.arange(batch_size)[:, None], slots_B[:, None] + jnp.arange(size))
    keep = keep_B[None, :, None, None, None]
    cache_k, cache_v = (cached.at[chunk].set(jnp.where(keep, new.astype(cached.dtype), cached[chunk]))
                        for cached, new in zip((cache_k, cache_v), kv))
    return cache_k, cache_v, written_B + keep_B

  no_logits = jnp.zeros((batch_size, sub, objective.vocab_size), jnp.float32)
  no_kv = tuple(jnp.zeros_like(cached[:, :, :size]) for cached in cache)  # [layers, B, C, H, K]

  def picked_pass(picked_B, cache, z_BxS, blocks_B, logits_of=None):
    """blocks_pass over the picked rows (on_some_rows): (logits [B, sub, V] of each row's sub-block starting at
    logits_of (its start in the segment), the blocks' keys and values [layers, B, C, H, K]); zeros elsewhere."""
    def run(rows_R, outputs):
      h_RxCxD, kv = blocks_pass(z_BxS[rows_R], blocks_B[rows_R], (cache[0][:, rows_R], cache[1][:, rows_R]))
      logits_BxCxV, kv_B = outputs
      if logits_of is not None:
        logits_RxCxV = module.head_logits(rows_slice(h_RxCxD, logits_of[rows_R] % size, sub))
        logits_BxCxV = logits_BxCxV.at[rows_R].set(logits_RxCxV.astype(jnp.float32))
      return logits_BxCxV, tuple(every.at[:, rows_R].set(new.astype(every.dtype)) for every, new in zip(kv_B, kv))
    return on_some_rows(picked_B, run, (no_logits, () if logits_of is not None else no_kv))

  def write_finished(z_BxS, target_B, cache):
    """Writes each row's finished blocks from the first it has not written up to target_B: one pass per block,
    over the rows that need it."""
    def write(cache):
      picked_B = cache[2] < target_B
      return store(cache, cache[2], picked_pass(picked_B, cache, z_BxS, cache[2])[1], picked_B)

    return jax.lax.while_loop(lambda cache: jnp.any(cache[2] < target_B), write, cache)

  def uncached_call(z_BxS, start_B, calls_B, served_B, cache):
    del calls_B  # (rows may be gathered: block diffusion's transformer binds nothing per row, no class labels)

    def run(rows_R, logits_BxCxV):
      logits_RxSxV = whole_sequence(z_BxS[rows_R], masked_time(objective.schedule, z_BxS[rows_R], mask_id))
      return logits_BxCxV.at[rows_R].set(rows_slice(logits_RxSxV, start_B[rows_R], sub).astype(jnp.float32))

    return on_some_rows(served_B, run, no_logits), 1, cache

  def cached_call(z_BxS, start_B, calls_B, served_B, cache):
    """A served row first writes the blocks it finished since its last call (write_finished)."""
    del calls_B
    cache = write_finished(z_BxS, jnp.where(served_B, start_B // size, cache[2]), cache)
    return picked_pass(served_B, cache, z_BxS, start_B // size, logits_of=start_B)[0], 1, cache

  cached = settings.kv_cache == "exact"
  z_BxS = jnp.asarray(z_BxS, jnp.int32)
  rows_cache = (*cache, jnp.zeros(batch_size, jnp.int32)) if cached else ()  # (keys, values, blocks written)
  z_BxS, nfe, order_BxS, rows_cache = decode(cached_call if cached else uncached_call, row_keys(key, batch_size),
                                             z_BxS, z_BxS == mask_id, settings, mask_id, jnp.zeros_like(z_BxS),
                                             rows_cache, block_key=block_key,
                                             stopped=stopped if end_id >= 0 else None)
  if cached:  # what each row finished after its last call (all of it, unless it stopped at end-of-text)
    cache = write_finished(z_BxS, finished_blocks(z_BxS, size, mask_id), rows_cache)[:2]
  if end_id >= 0:
    z_BxS = jnp.where(z_BxS == mask_id, end_id, z_BxS)
  return z_BxS, nfe, jnp.where(order_BxS > 0, order_BxS + clock, 0), cache
