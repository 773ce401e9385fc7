"""Block diffusion (`objective = "bd3"`, BD3-LM): blocks of diffusion.block_size tokens, each an MD4 bound given
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

from md4_jax import samplers
from md4_jax.core import block_diffusion
from md4_jax.core.attention_masks import Mask
from md4_jax.core.schedules import get_schedule
from md4_jax.objectives.base import Objective, refuse


class BlockDiffusion(Objective):
  """--mode eval reports an upper bound (continuous or T-step, per block) on the negative log-likelihood."""

  name = "bd3"
  network_requirements = types.MappingProxyType({"time_conditioning": False, "block_masks": True})

  def __init__(self, config, vocab_size: int):
    super().__init__(config, vocab_size)
    self.schedule = get_schedule(config.diffusion.schedule)
    self.block_size = int(config.diffusion.block_size)

  @classmethod
  def check_config(cls, config) -> None:
    block_size, length = config.diffusion.block_size, config.data.seq_len
    if block_size < 1 or length % block_size:
      refuse(f"diffusion.block_size={block_size} must divide data.seq_len={length} (blocks tile the sequence; "
             f"e.g. 4, or {length} for one block = MD4)")
    num_blocks, steps = length // block_size, config.sampler.steps
    if steps % num_blocks:
      refuse(f"sampler.steps={steps} must be a multiple of the {num_blocks} blocks (data.seq_len / "
             f"diffusion.block_size): the blocks share the steps, e.g. sampler.steps={num_blocks * 4}")
    low, high = config.diffusion.clip_low, config.diffusion.clip_high
    if not 0.0 <= low < high <= 1.0:
      refuse(f"diffusion.clip_low={low}, diffusion.clip_high={high}: need 0 <= clip_low < clip_high <= 1 (the "
             "range training draws block times from; 0 and 1 = the plain bound)")
    if config.sampler.name == "semi_ar":
      refuse("sampler.name='semi_ar': objective='bd3' already samples block by block (blocks of "
             "diffusion.block_size); name the sampler run inside each block instead, e.g. sampler.name='ancestral'")

  def bound_name(self, timesteps: int) -> str:
    kind = "continuous-time" if timesteps == 0 else f"{timesteps}-step"
    return f"{kind} block-diffusion negative-ELBO bound (blocks of {self.block_size})"

  def terms(self, net, x0_BxL, key, *, token_mask_BxL, timesteps: int, t_B=None, capacity_fraction: float = 1.0,
            groups: int = 1, training: bool = False) -> dict:
    """One-sample estimate per example: every block's time and mask drawn, all blocks scored in one call. In
    training, times come from [diffusion.clip_low, clip_high] (the plain bound at the defaults 0 and 1)."""
    del capacity_fraction, groups  # every position goes through the output layer
    diffusion_cfg = self.config.diffusion
    clip = (float(diffusion_cfg.clip_low), float(diffusion_cfg.clip_high)) if training else (0.0, 1.0)
    return block_diffusion.elbo_terms(net, x0_BxL, key, self.schedule, vocab_size=self.vocab_size,
                                      block_size=self.block_size, timesteps=timesteps,
                                      antithetic=diffusion_cfg.antithetic, token_mask_BxL=token_mask_BxL, t_B=t_B,
                                      clip=clip)

  def sample(self, denoise, key, z_BxL, settings, *, time_dependent: bool, module):
    """(tokens_BxL, NFE, order_BxL): blocks left to right (a `lax.fori_loop`), block b filled by the configured
    sampler (sampler.steps shared by the blocks, key fold_in(key, b)) while the network sees block b and the
    blocks before it, never later ones.

    sampler.kv_cache='none': every call runs the network over the whole sequence under the block-causal mask.
    'exact': calls run over block b's C tokens alone (`module.extend`) against the finished blocks' cached keys
    and values; once the block is finished one more pass over its clean tokens writes its keys and values. Same
    function, so the same draws (tested), without recomputing finished tokens. NFE counts the sampler's calls.
    """
    del time_dependent  # the network is time-independent
    batch_size, length = z_BxL.shape
    size, vocab_size, cached = self.block_size, self.vocab_size, settings.kv_cache == "exact"
    num_blocks = samplers.semi_ar_blocks(size, settings.steps, length)  # the blocks share the steps evenly
    inner_settings = dataclasses.replace(settings, steps=settings.steps // num_blocks)
    inner = samplers.SAMPLERS[settings.name]
    block_L = jnp.arange(length) // size
    whole_sequence = functools.partial(denoise, mask=Mask("block_causal", size))

    def one_block(index, carry):
      z_BxL, nfe, order_BxL, cache = carry
      start = index * size
      block_of = lambda z_BxL: jax.lax.dynamic_slice_in_dim(z_BxL, start, size, axis=1)  # noqa: E731

      def block_only(z_BxL, t_B):
        del t_B
        h_BxCxD, _ = module.extend(block_of(z_BxL), start, cache)
        logits_BxLxV = jnp.zeros((batch_size, length, vocab_size), jnp.float32)  # only the block's are read
        return jax.lax.dynamic_update_slice_in_dim(logits_BxLxV, module.head_logits(h_BxCxD), start, axis=1)

      block_key = key if num_blocks == 1 else jax.random.fold_in(key, index)
      active_BxL = (z_BxL == vocab_size) & (block_L == index)
      z_BxL, block_nfe, order_BxL = inner(block_only if cached else whole_sequence, block_key, self.schedule,
                                          z_BxL, active_BxL, inner_settings, vocab_size, False, order_BxL)
      if cached:
        _, cache = module.extend(block_of(z_BxL), start, cache)
      return z_BxL, nfe + block_nfe, order_BxL, cache

    z_BxL = jnp.asarray(z_BxL, jnp.int32)
    cache = module.empty_cache(batch_size) if cached else ()
    z_BxL, nfe, order_BxL, _ = jax.lax.fori_loop(
        0, num_blocks, one_block, (z_BxL, jnp.zeros((), jnp.int32), jnp.zeros_like(z_BxL), cache))
    return z_BxL, nfe, order_BxL


OBJECTIVE = BlockDiffusion
