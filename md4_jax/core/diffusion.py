"""MD4's forward process and negative ELBO (docs/method.md), as pure jnp functions.

No Flax and no config here: the network enters only as a callable
`denoise(z_BxL, t_B) -> logits_BxLxV` and the schedule as an object from
`schedules.get_schedule`. Every loss is in nats per example.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from md4_jax.core import fused_head
from md4_jax.core.fused_head import token_nll


def spread_order(batch_size: int) -> np.ndarray:
  """A permutation of range(B) whose every contiguous block is spread evenly over range(B).

  Row b gets the rank of frac(b * golden ratio) (a Kronecker sequence), so the rows a
  device holds (a contiguous block) see low and high times alike.
  """
  golden = (math.sqrt(5.0) - 1.0) / 2.0
  return np.argsort(np.argsort(np.mod(np.arange(batch_size) * golden, 1.0), kind="stable"), kind="stable")


def sample_times(key, batch_size: int, antithetic: bool = True):
  """t_B in [0, 1). Antithetic: the B times (u + j / B) mod 1, j < B, one u for the batch
  (unbiased, lower variance), assigned to rows in `spread_order` so every block of rows
  masks about the same share of its tokens."""
  if antithetic:
    u = jax.random.uniform(key, ())
    return jnp.mod(u + spread_order(batch_size) / batch_size, 1.0)
  return jax.random.uniform(key, (batch_size,))


def stratified_times(key, batch_size: int, draws: int, antithetic: bool = True):
  """t_KxB for K draws per sequence: (t_b + k / K) mod 1, with t_b from `sample_times`.

  Each sequence's K times cover [0, 1) evenly (stratified, so their mean estimates the
  integral over t without bias and with less variance than K independent draws).
  """
  return jnp.mod(sample_times(key, batch_size, antithetic)[None] + jnp.arange(draws)[:, None] / draws, 1.0)


def discretize_times(t_B, timesteps: int):
  """Maps t in [0, 1) to the grid {1/T, ..., 1}, uniform over the T steps."""
  step_B = jnp.floor(t_B * timesteps) + 1.0
  return jnp.minimum(step_B, timesteps) / timesteps


def mask_tokens(key, x0_BxL, mask_prob_B, mask_id: int, token_mask_BxL=None):
  """z_t: each token independently replaced by `mask_id` with probability 1 - alpha_t: mask_prob_B is one rate
  per sequence [B], or one per position [B, L] (block diffusion's per-block times).

  Padding (token_mask == 0) is never masked, so it never enters the loss.
  """
  mask_prob_Bx1_or_BxL = mask_prob_B[:, None] if mask_prob_B.ndim == 1 else mask_prob_B
  masked_BxL = jax.random.uniform(key, x0_BxL.shape) < mask_prob_Bx1_or_BxL
  if token_mask_BxL is not None:
    masked_BxL &= token_mask_BxL.astype(bool)
  return jnp.where(masked_BxL, mask_id, x0_BxL)


def masked_cross_entropy(logits_BxLxV, x0_BxL, z_BxL, mask_id: int):
  """sum over masked positions of -log p(x0 | z_t), per example, in float32."""
  return jnp.sum(jnp.where(z_BxL == mask_id, token_nll(logits_BxLxV, x0_BxL), 0.0), axis=-1)


def masked_head_loss(h_BxLxD, head_loss, x0_BxL, z_BxL, mask_id: int, *, capacity: int | None = None,
                     groups: int = 1, token_loss=None, row_values_BxR=None, weighted_nll=None, weight_B=None):
  """The sum over masked positions of a position's loss, per example, with the output layer fused into it.

  head_loss(h_NxD, x0_N, token_loss=, row_N=, table_RxK=) -> [N]: the network's output layer and the loss in
  one (fused_head.py: no [N, V] array is kept). token_loss(logits_NxV, x0_N, values_NxK) is -log p(x0) by
  default; values are each position's row of row_values_BxR (a per-example table, e.g. GenMD4's per-class rates).

  weighted_nll (cross-entropy only, with weight_B [B]): the network's `weighted_nll(h_NxD, x0_N, weight_N)`,
  used instead of head_loss to also return sum_b weight_B[b] loss_B[b] with its gradient made in the layer's
  forward pass (fused_head.weighted_nll); loss_B then carries no gradient. For training, where that weighted
  sum is what is differentiated.

  capacity None: every position goes through the layer (masked ones count). Else the B rows form `groups`
  contiguous blocks (one per batch shard, so gathers stay on their device) and each block's first `capacity`
  masked positions are gathered before the layer; when any block has more, every position goes through it
  instead (`lax.cond`), so the value is always the exact objective, only the cost changes.

  Returns:
    (loss_B, 1.0 if every position went through the layer because a block overflowed else 0.0, the weighted
    sum: 0.0 without weighted_nll).
  """
  batch_size, length = z_BxL.shape
  rows = batch_size // groups
  if token_loss is None:
    token_loss = fused_head.cross_entropy
  if row_values_BxR is None:
    row_values_BxR = jnp.zeros((batch_size, 1))
  if weight_B is None:
    weight_B = jnp.zeros((batch_size,))

  def losses(h_NxD, x0_N, row_N, values_RxK, weight_R, counted_N):
    """(each position's loss [N], the weighted sum over the counted positions or 0.0)."""
    if weighted_nll is None:
      return head_loss(h_NxD, x0_N, token_loss=token_loss, row_N=row_N, table_RxK=values_RxK), jnp.zeros(())
    total, loss_N = weighted_nll(h_NxD, x0_N, jnp.where(counted_N, weight_R[row_N], 0.0))
    return loss_N, total

  def every_position():
    masked_BxL = z_BxL == mask_id
    loss_N, total = losses(h_BxLxD.reshape(batch_size * length, -1), x0_BxL.reshape(-1),
                           jnp.repeat(jnp.arange(batch_size), length), row_values_BxR, weight_B, masked_BxL.reshape(-1))
    return jnp.sum(jnp.where(masked_BxL, loss_N.reshape(batch_size, length), 0.0), axis=-1), total

  if capacity is None or capacity >= rows * length:
    loss_B, total = every_position()
    return loss_B, jnp.zeros((), jnp.float32), total
  masked_GxN = (z_BxL == mask_id).reshape(groups, rows * length)
  overflow = jnp.any(jnp.sum(masked_GxN, axis=-1) > capacity)

  def gathered():
    def one_group(masked_N, h_NxD, x0_N, values_RxK, weight_R):
      (index_C,) = jnp.nonzero(masked_N, size=capacity, fill_value=0)
      valid_C = jnp.arange(capacity) < jnp.sum(masked_N)
      row_C = index_C // length
      loss_C, total = losses(h_NxD[index_C], x0_N[index_C], row_C, values_RxK, weight_R, valid_C)
      return jax.ops.segment_sum(jnp.where(valid_C, loss_C, 0.0), row_C, num_segments=rows), total

    loss_GxR, total_G = jax.vmap(one_group)(masked_GxN, h_BxLxD.reshape(groups, rows * length, -1),
                                            x0_BxL.reshape(groups, rows * length),
                                            row_values_BxR.reshape(groups, rows, -1), weight_B.reshape(groups, rows))
    return loss_GxR.reshape(batch_size), jnp.sum(total_G)

  # Neither branch keeps [N, V] residuals (the fused layer recomputes its logits in the backward pass or makes
  # its gradient in the forward pass).
  loss_B, total = jax.lax.cond(overflow, every_position, gathered)
  return loss_B, overflow.astype(jnp.float32), total


def elbo_terms(denoise, x0_BxL, key, schedule, *, vocab_size: int, timesteps: int = 0,
               antithetic: bool = True, token_mask_BxL=None, head_loss=None, capacity: int | None = None,
               groups: int = 1, t_B=None, weighted_nll=None):
  """One-sample estimate of the negative ELBO terms, per example, in nats.

  Args:
    denoise: `denoise(z_BxL, t_B) -> logits_BxLxV` over the V real tokens.
    x0_BxL: clean tokens in [0, V).
    key: PRNG key; split here into time and mask draws.
    schedule: a `schedules.Schedule`.
    vocab_size: V; the mask token is V.
    timesteps: 0 for the continuous-time bound, T > 0 for the T-step discrete bound.
    antithetic: low-discrepancy times across the batch.
    token_mask_BxL: 1 for real tokens, 0 for padding (excluded everywhere).
    head_loss: when given, `denoise` returns hidden states [B, L, D] and `head_loss` is the output layer
      fused with the loss (see `masked_head_loss`).
    capacity: masked positions gathered per group of rows before the output layer (with `head_loss`; None =
      every position).
    groups: contiguous row blocks gathered separately (with `head_loss`).
    t_B: times in [0, 1) to use instead of drawing them.
    weighted_nll: with `head_loss`, the network's `weighted_nll` (training: see `masked_head_loss`); then the
      gradient flows through the returned `surrogate` only.

  Returns:
    dict of [B] arrays: `diffusion`, `reconstruction`, `prior`, `loss` (their sum),
    `num_tokens` (real tokens per example, for per-token units) and, with `head_loss`,
    `fallback` (scalar: 1.0 when a block had more masked positions than `capacity`); with `weighted_nll`,
    `surrogate`: `loss`'s value with its gradient.
  """
  batch_size = x0_BxL.shape[0]
  if token_mask_BxL is None:
    token_mask_BxL = jnp.ones_like(x0_BxL)
  num_tokens_B = jnp.sum(token_mask_BxL, axis=-1).astype(jnp.float32)
  time_key, mask_key = jax.random.split(key)
  if t_B is None:
    t_B = sample_times(time_key, batch_size, antithetic)
  if timesteps:
    t_B = discretize_times(t_B, timesteps)
  mask_prob_B = schedule.mask_prob(t_B)
  z_BxL = mask_tokens(mask_key, x0_BxL, mask_prob_B, vocab_size, token_mask_BxL)
  weight_B = bound_weight(schedule, t_B, timesteps)
  fallback = None
  if head_loss is None:
    cross_entropy_B = masked_cross_entropy(denoise(z_BxL, t_B), x0_BxL, z_BxL, vocab_size)
  else:
    cross_entropy_B, fallback, weighted = masked_head_loss(
        denoise(z_BxL, t_B), head_loss, x0_BxL, z_BxL, vocab_size, capacity=capacity, groups=groups,
        weighted_nll=weighted_nll, weight_B=weight_B)
  terms = bound_terms(weight_B * cross_entropy_B, num_tokens_B, schedule, vocab_size)
  if fallback is not None:
    terms["fallback"] = fallback
  if weighted_nll is not None:
    # cross_entropy_B has no gradient here; `weighted` (sum_b weight_B cross_entropy_B) has it. The surrogate
    # is `loss` plus that sum minus itself, spread over the batch: the bound's value, the bound's gradient.
    terms["surrogate"] = terms["loss"] + (weighted - jax.lax.stop_gradient(weighted)) / batch_size
  return terms


def bound_weight(schedule, t, timesteps: int):
  """The weight of a masked position's cross-entropy at time t (any shape): -alpha'_t / (1 - alpha_t) for the
  continuous-time bound, T (alpha_s - alpha_t) / (1 - alpha_t) with s = t - 1/T for the T-step bound (t on its
  grid: T * E_i[...] with step i drawn uniformly)."""
  if timesteps:
    return timesteps * (schedule.alpha(t - 1.0 / timesteps) - schedule.alpha(t)) / schedule.mask_prob(t)
  # polyK with K < 1 has an infinite weight at t = 0 (a point of measure zero, met about B 2^-23 times
  # per step): the term is 0 there, and the weight is never evaluated at 0, so no NaN and no NaN gradient.
  positive = t > 0
  return jnp.where(positive, -schedule.weight(jnp.where(positive, t, 1.0)), 0.0)


def bound_terms(diffusion_B, num_tokens_B, schedule, vocab_size: int) -> dict:
  """The bound's terms per example from its diffusion term: `reconstruction` (tokens already masked at t = 0,
  predicted uniformly), `prior` (KL(q(z_1 | x0) || p(z_1)), p(z_1) = mask w.p. 1 - alpha_1, else uniform over
  V), `loss` (the sum) and `num_tokens`."""
  log_v = jnp.log(float(vocab_size))
  terms = {"diffusion": diffusion_B,
           "reconstruction": num_tokens_B * schedule.mask_prob(jnp.zeros(())) * log_v,
           "prior": num_tokens_B * schedule.alpha(jnp.ones(())) * log_v}
  terms["loss"] = terms["diffusion"] + terms["reconstruction"] + terms["prior"]
  terms["num_tokens"] = num_tokens_B
  return terms
