"""Block diffusion (BD3-LM, Arriola et al. 2025): the sequence is K blocks of L' tokens, and the negative ELBO is
the sum over blocks of MD4's bound for block k given the clean blocks before it (docs/method.md).

Every block has its own time t_k (so its own mask rate). All blocks are scored in one network call over 2L
positions: the noised sequence z and the clean one x side by side, both at positions 0..L-1, under the
`block_diffusion` attention mask (z's block k sees itself and x's blocks before k; x's block k sees x's blocks
up to k). The network is time-independent (blocks differ in t), as in the paper. Pure jnp: the network enters
as a `models.Network` (its `features` / `head_loss` when it splits its output layer off).
"""

import jax
import jax.numpy as jnp

from md4_jax.core import diffusion, shifted
from md4_jax.core.attention_masks import Mask
from md4_jax.core.fused_head import token_nll


def block_times(key, batch_size: int, num_blocks: int, antithetic: bool = True, t_B=None, clip=(0.0, 1.0)):
  """t_BxK, each block's time. Drawn: B K times (antithetic over all of them, so K = 1 draws MD4's t_B from
  the same key), mapped from [0, 1) onto [clip_low, clip_high) (BD3-LM's clipped schedule; (0, 1) is the bound).
  Given t_B (evaluation's stratified draws): block k at (t_b + k / K) mod 1, uniform when t_b is."""
  if t_B is None:
    low, high = clip
    t_BxK = diffusion.sample_times(key, batch_size * num_blocks, antithetic).reshape(batch_size, num_blocks)
    return t_BxK if (low, high) == (0.0, 1.0) else low + (high - low) * t_BxK
  return jnp.mod(t_B[:, None] + jnp.arange(num_blocks) / num_blocks, 1.0)


def layout_inputs(z_BxL, x0_BxL, block_size: int, shift_id: int | None = None):
  """(the [z | x] inputs [B, 2L], the call's context: positions and the block-diffusion mask). shift_id (the start
  token): both streams read shifted one place right (core/shifted.py), each noisy block opening with the clean
  token before it."""
  if shift_id is not None:
    z_BxL, x0_BxL = shifted.block_inputs(z_BxL, x0_BxL, block_size, shift_id), shifted.shift_right(x0_BxL, shift_id)
  length = x0_BxL.shape[1]
  return jnp.concatenate([z_BxL, x0_BxL], axis=1), {"positions_L": jnp.tile(jnp.arange(length), 2),
                                                    "mask": Mask("block_diffusion", block_size)}


def logits_in_layout(net, z_BxL, x0_BxL, block_size: int, shift_id: int | None = None):
  """logits_BxLxV of p(x0 | z's block, x's earlier blocks) at every position, from one call over [z | x]."""
  inputs_Bx2L, context = layout_inputs(z_BxL, x0_BxL, block_size, shift_id)
  return net(inputs_Bx2L, jnp.zeros((x0_BxL.shape[0],)), **context)[:, :x0_BxL.shape[1]]


def token_nll_in_layout(net, z_BxL, x0_BxL, block_size: int, shift_id: int | None = None):
  """-log p(x0 | z's block, x's earlier blocks) at every position [B, L], from one call over [z | x] (shift_id: see
  `layout_inputs`)."""
  batch_size, length = x0_BxL.shape
  inputs_Bx2L, context = layout_inputs(z_BxL, x0_BxL, block_size, shift_id)
  no_time_B = jnp.zeros((batch_size,))
  if net.splits_head:
    h_BxLxD = net.features(inputs_Bx2L, no_time_B, **context)[:, :length]
    return net.head_loss(h_BxLxD.reshape(batch_size * length, -1), x0_BxL.reshape(-1)).reshape(batch_size, length)
  return token_nll(logits_in_layout(net, z_BxL, x0_BxL, block_size, shift_id), x0_BxL)


def terms_given(net, x0_BxL, z_BxL, t_BxK, schedule, *, vocab_size: int, timesteps: int = 0, token_mask_BxL=None,
                shift: bool = False):
  """The bound's terms per example in nats for given noised tokens z and block times t (already on the T-step
  grid when timesteps > 0): `diffusion`, `reconstruction`, `prior`, `loss`, `num_tokens`. shift: the network reads
  its input shifted (core/shifted.py; the mask id is the start token)."""
  if token_mask_BxL is None:
    token_mask_BxL = jnp.ones_like(x0_BxL)
  block_size = x0_BxL.shape[1] // t_BxK.shape[1]
  weight_BxL = diffusion.bound_weight(schedule, jnp.repeat(t_BxK, block_size, axis=1), timesteps)
  nll_BxL = token_nll_in_layout(net, z_BxL, x0_BxL, block_size, vocab_size if shift else None)
  diffusion_B = jnp.sum(jnp.where(z_BxL == vocab_size, weight_BxL * nll_BxL, 0.0), axis=-1)
  num_tokens_B = jnp.sum(token_mask_BxL, axis=-1).astype(jnp.float32)
  return diffusion.bound_terms(diffusion_B, num_tokens_B, schedule, vocab_size)


def elbo_terms(net, x0_BxL, key, schedule, *, vocab_size: int, block_size: int, timesteps: int = 0,
               antithetic: bool = True, token_mask_BxL=None, t_B=None, clip=(0.0, 1.0), shift: bool = False):
  """One-sample estimate of the block-diffusion negative ELBO's terms, per example, in nats: block times and
  masks drawn from `key` (split like diffusion.elbo_terms, so block_size = L draws MD4's t and z_t). A `clip`
  other than (0, 1) draws times in that range: a training objective, no longer the bound."""
  batch_size, length = x0_BxL.shape
  time_key, mask_key = jax.random.split(key)
  t_BxK = block_times(time_key, batch_size, length // block_size, antithetic, t_B, clip)
  if timesteps:
    t_BxK = diffusion.discretize_times(t_BxK, timesteps)
  mask_prob_BxL = schedule.mask_prob(jnp.repeat(t_BxK, block_size, axis=1))
  z_BxL = diffusion.mask_tokens(mask_key, x0_BxL, mask_prob_BxL, vocab_size, token_mask_BxL)
  return terms_given(net, x0_BxL, z_BxL, t_BxK, schedule, vocab_size=vocab_size, timesteps=timesteps,
                     token_mask_BxL=token_mask_BxL, shift=shift)
