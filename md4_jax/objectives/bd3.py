"""Block diffusion (`objective = "bd3"`, BD3-LM): blocks of diffusion.bd3.block_size tokens, each an MD4 bound given
the clean blocks before it (core/block_diffusion.py); sampled block by block, left to right.

The transformer runs without a time input (blocks differ in t) and with the block layouts' attention masks.
block_size = data.seq_len is MD4 with a time-independent network; block_size = 1 is, in expectation, the
autoregressive likelihood.
"""

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import ml_collections

from md4_jax import samplers
from md4_jax.core import block_diffusion, diffusion, shifted
from md4_jax.core.attention_masks import Mask
from md4_jax.core.schedules import get_schedule
from md4_jax.models.transformer import write_cache
from md4_jax.objectives import bd3_rows
from md4_jax.objectives.base import Objective, check_shift, refuse
from md4_jax.objectives.bd3_rows import cache_slot


def config_group() -> ml_collections.ConfigDict:
  """diffusion.bd3.*: gathered by configs/base.py."""
  group = ml_collections.ConfigDict()
  group.block_size = 4  # tokens per block L' (divides data.seq_len; L' = L is MD4)
  # Training draws block times in [clip_low, clip_high] (BD3-LM's clipped schedule: less gradient variance;
  # train/loss is then that clipped objective, not a bound); evaluation always takes t in [0, 1).
  group.clip_low = 0.0  # lowest training time (0 = the bound)
  group.clip_high = 1.0  # highest training time (1 = the bound)
  return group


class BlockDiffusion(Objective):
  """--mode eval reports an upper bound (continuous or T-step, per block) on the negative log-likelihood."""

  name = "bd3"
  network_requirements = types.MappingProxyType({"time_conditioning": False, "block_masks": True})

  def __init__(self, config, vocab_size: int):
    super().__init__(config, vocab_size)
    self.schedule = get_schedule(config.diffusion.schedule)
    self.block_size = int(config.diffusion.bd3.block_size)

  @classmethod
  def check_config(cls, config) -> None:
    check_shift(config)
    block_size, length = config.diffusion.bd3.block_size, config.data.seq_len
    if block_size < 1 or length % block_size:
      refuse(f"diffusion.bd3.block_size={block_size} must divide data.seq_len={length} (blocks tile the sequence; "
             f"e.g. 4, or {length} for one block = MD4)")
    num_blocks, steps = length // block_size, config.sampler.steps
    if steps % num_blocks:
      refuse(f"sampler.steps={steps} must be a multiple of the {num_blocks} blocks (data.seq_len / "
             f"diffusion.bd3.block_size): the blocks share the steps, e.g. sampler.steps={num_blocks * 4}")
    low, high = config.diffusion.bd3.clip_low, config.diffusion.bd3.clip_high
    if not 0.0 <= low < high <= 1.0:
      refuse(f"diffusion.bd3.clip_low={low}, diffusion.bd3.clip_high={high}: need 0 <= clip_low < clip_high <= 1 (the "
             "range training draws block times from; 0 and 1 = the plain bound)")
    if config.sampler.name == "semi_ar":
      refuse("sampler.name='semi_ar': objective='bd3' already samples block by block (blocks of "
             "diffusion.bd3.block_size); name the sampler run inside each block instead, e.g. sampler.name='ancestral'")

  @classmethod
  def check_sample_length(cls, config, length: int) -> None:
    """Any whole number of blocks, through the exact cache (its slots slide); longer than trained needs
    relative positions (learned ones end at data.seq_len)."""
    if length == config.data.seq_len:
      return
    if config.diffusion.shift:
      refuse(f"--length={length}: a shifted run (diffusion.shift=True) draws its trained length only "
             f"(data.seq_len={config.data.seq_len}); each segment would need the previous one's last token")
    size = config.diffusion.bd3.block_size
    if length % size:
      refuse(f"--length={length} must be a whole number of blocks (diffusion.bd3.block_size={size}), e.g. "
             f"{(length // size + 1) * size}")
    if config.sampler.kv_cache != "exact":
      refuse(f"--length={length} (data.seq_len={config.data.seq_len}) is drawn through the block cache: add "
             "--config.sampler.kv_cache=exact")
    if length >= 2**31:
      refuse(f"--length={length} is past the largest position a sample can have (2**31 - 1 tokens)")
    if length > config.data.seq_len and config.model.transformer.positions != "rope":
      refuse(f"--length={length} is longer than the training length {config.data.seq_len}, and "
             f"model.transformer.positions={config.model.transformer.positions!r} has no embedding past it; train with model.transformer.positions='rope'")

  def bound_name(self, timesteps: int) -> str:
    kind = "continuous-time" if timesteps == 0 else f"{timesteps}-step"
    return f"{kind} block-diffusion negative-ELBO bound (blocks of {self.block_size})"

  def terms(self, net, x0_BxL, key, *, token_mask_BxL, timesteps: int, t_B=None, capacity_fraction: float = 1.0,
            groups: int = 1, training: bool = False) -> dict:
    """One-sample estimate per example: every block's time and mask drawn, all blocks scored in one call. In
    training, times come from [diffusion.bd3.clip_low, clip_high] (the plain bound at the defaults 0 and 1)."""
    del capacity_fraction, groups  # every position goes through the output layer
    diffusion_cfg, own = self.config.diffusion, self.config.diffusion.bd3
    clip = (float(own.clip_low), float(own.clip_high)) if training else (0.0, 1.0)
    return block_diffusion.elbo_terms(net, x0_BxL, key, self.schedule, vocab_size=self.vocab_size,
                                      block_size=self.block_size, timesteps=timesteps,
                                      antithetic=diffusion_cfg.antithetic, token_mask_BxL=token_mask_BxL, t_B=t_B,
                                      clip=clip, shift=bool(diffusion_cfg.shift))

  def conditional_loss(self, net, x0_BxL, key, *, scored_BxL, unknown_BxL, t_B):
    """The block bound restricted to the scored positions, one draw: block k at time (t_b + k / K) mod 1, its
    scored tokens masked at that rate; the blocks before a scored one are clean context, later ones play no part."""
    length, size = x0_BxL.shape[1], self.block_size
    t_BxL = jnp.repeat(block_diffusion.block_times(None, x0_BxL.shape[0], length // size, t_B=t_B), size, axis=1)
    masked_BxL = scored_BxL & (jax.random.uniform(key, x0_BxL.shape) < self.schedule.mask_prob(t_BxL))
    z_BxL = jnp.where(masked_BxL | unknown_BxL, self.vocab_size, x0_BxL)
    nll_BxL = block_diffusion.token_nll_in_layout(net, z_BxL, x0_BxL, size, self._shift_id())
    weighted_BxL = diffusion.bound_weight(self.schedule, t_BxL, 0) * nll_BxL
    diffusion_B = jnp.sum(jnp.where(masked_BxL, weighted_BxL, 0.0), axis=-1)
    return diffusion.bound_terms(diffusion_B, jnp.sum(scored_BxL, axis=-1), self.schedule, self.vocab_size)["loss"]

  def greedy_tokens(self, net, x0_BxL, *, scored_BxL, unknown_BxL):
    """Each block's argmax with its scored positions masked and the blocks before it clean (one call)."""
    z_BxL = jnp.where(scored_BxL | unknown_BxL, self.vocab_size, x0_BxL)
    return jnp.argmax(block_diffusion.logits_in_layout(net, z_BxL, x0_BxL, self.block_size, self._shift_id()),
                      axis=-1)

  def _shift_id(self):
    return self.vocab_size if self.config.diffusion.shift else None

  def sample(self, denoise, key, z_BxL, settings, *, time_dependent: bool, module):
    """(tokens_BxN, NFE, order_BxN): blocks left to right (a `lax.fori_loop`), block b filled by the configured
    sampler (key fold_in(key, b); each block gets the steps it has at the training length, sampler.steps /
    (data.seq_len / block_size)) while the network sees block b and the blocks before it, never later ones.

    sampler.kv_cache='none': every call runs the network over the whole sequence under the block-causal mask.
    'exact': calls run over block b's C tokens alone (`module.extend`) against the finished blocks' cached keys
    and values; once the block is finished one more pass over its clean tokens writes its keys and values. Same
    function, so the same draws (tested), without recomputing finished tokens. The cache holds data.seq_len
    positions, one slot per block, reused in turn: a sequence longer than the training length (N > seq_len,
    `--length`) is drawn with each block seeing the seq_len / block_size - 1 blocks before it (the most any
    block saw in training), segment by segment (`sample_segment`). NFE counts the sampler's calls.
    sampler.name='parallel' moves every row through the blocks on its own instead (bd3_rows.py).
    """
    del time_dependent  # the network is time-independent
    cache = module.empty_cache(z_BxL.shape[0]) if settings.kv_cache == "exact" else ()
    z_BxL, nfe, order_BxL, _ = self.sample_segment(denoise, key, z_BxL, settings, module=module, first_block=0,
                                                   cache=cache, total_length=z_BxL.shape[1])
    return z_BxL, nfe, order_BxL

  def sample_segment(self, denoise, key, z_BxS, settings, *, module, first_block, cache, total_length: int,
                     clock=0):
    """`sample` over a segment of S tokens (whole blocks) that starts at block `first_block` (may be traced) of a
    sequence of total_length tokens: (tokens_BxS, NFE, order_BxS, cache). With the exact cache the blocks before
    the segment are in `cache` (what the previous segment returned), so a long sequence is drawn a segment at a
    time with the draws of one whole call (tested), holding one segment. `clock`: the order the blocks before it
    reached (their largest order_BxS)."""
    length = z_BxS.shape[1]
    size, vocab_size, cached = self.block_size, self.vocab_size, settings.kv_cache == "exact"
    trained_length = int(self.config.data.seq_len)
    if (length != trained_length or total_length != length) and not cached:
      raise ValueError(f"a length of {total_length} (data.seq_len={trained_length}) needs sampler.kv_cache='exact'")
    shift = bool(self.config.diffusion.shift)  # the network reads its input one place right (core/shifted.py)
    whole_sequence = functools.partial(shifted.Shifted(denoise, vocab_size) if shift else denoise,
                                       mask=Mask("block_causal", size))
    if settings.name == "parallel":  # every row through its own blocks
      return bd3_rows.sample_segment(self, whole_sequence, key, z_BxS, settings, module=module,
                                     first_block=first_block, cache=cache, total_length=total_length, clock=clock)
    steps = settings.steps // samplers.semi_ar_blocks(size, settings.steps, trained_length)
    inner_settings = dataclasses.replace(settings, steps=steps)
    inner = samplers.run_of(settings.name, samplers.SAMPLERS)

    def one_block(offset, carry):
      z_BxS, nfe, order_BxS, cache = carry
      index, start = first_block + offset, offset * size  # the block in the sequence, its place in the segment
      positions_C = index * size + jnp.arange(size)
      slot_start, sees_S = cache_slot(index, size, trained_length)
      block_of = lambda x_BxS: jax.lax.dynamic_slice_in_dim(x_BxS, start, size, axis=1)  # noqa: E731
      # Shifted: the block's input opens with the token before it (finished; the start id for the first block).
      before_Bx1 = jax.lax.dynamic_slice_in_dim(shifted.shift_right(z_BxS, vocab_size), start, 1, axis=1)
      block_input = (lambda z_BxC: jnp.concatenate([before_Bx1, z_BxC[:, :-1]], axis=1)) if shift else (  # noqa: E731
          lambda z_BxC: z_BxC)

      def block_only(z_BxC, t_B):
        del t_B
        return module.head_logits(module.extend(block_input(z_BxC), positions_C, cache, sees_S)[0])

      def in_sequence(z_BxC, t_B):
        logits_BxLxV = whole_sequence(jax.lax.dynamic_update_slice_in_dim(z_BxS, z_BxC, start, axis=1), t_B)
        return block_of(logits_BxLxV)

      block_key = key if total_length == size else jax.random.fold_in(key, index)
      z_BxC = block_of(z_BxS)
      z_BxC, block_nfe, order_BxC = inner(block_only if cached else in_sequence, block_key, self.schedule, z_BxC,
                                          z_BxC == vocab_size, inner_settings, vocab_size, False, jnp.zeros_like(z_BxC))
      # The clock runs on across blocks (and segments).
      order_BxC = jnp.where(order_BxC > 0, order_BxC + jnp.maximum(jnp.max(order_BxS), clock), 0)
      if cached:
        kv = module.extend(block_input(z_BxC), positions_C, cache, sees_S)[1]
        cache = write_cache(cache, kv, slot_start)
      update = lambda x_BxS, x_BxC: jax.lax.dynamic_update_slice_in_dim(x_BxS, x_BxC, start, axis=1)  # noqa: E731
      return update(z_BxS, z_BxC), nfe + block_nfe, update(order_BxS, order_BxC), cache

    # sampler.stop_at_end with an end-of-text id: a row is done once a finished block holds it; the loop ends when
    # every row is, and what is left masked becomes end-of-text (samples and the harness cut there).
    end_id = settings.end_id if settings.stop_at_end else -1

    def unfinished(carry):
      offset, done_B = carry[0], carry[-1]
      return (offset < length // size) & ~jnp.all(done_B)

    def next_block(carry):
      offset, *state, done_B = carry
      z_BxS, *rest = one_block(offset, tuple(state))
      if end_id >= 0:
        block_BxC = jax.lax.dynamic_slice_in_dim(z_BxS, offset * size, size, axis=1)
        done_B = done_B | jnp.any(block_BxC == end_id, axis=1)
      return (offset + 1, z_BxS, *rest, done_B)

    z_BxS = jnp.asarray(z_BxS, jnp.int32)
    _, z_BxS, nfe, order_BxS, cache, _ = jax.lax.while_loop(
        unfinished, next_block, (0, z_BxS, jnp.zeros((), jnp.int32), jnp.zeros_like(z_BxS), cache,
                                 jnp.zeros(z_BxS.shape[0], bool)))
    if end_id >= 0:
      z_BxS = jnp.where(z_BxS == vocab_size, end_id, z_BxS)
    return z_BxS, nfe, order_BxS, cache


OBJECTIVE = BlockDiffusion
