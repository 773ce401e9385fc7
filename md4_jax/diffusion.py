"""MD4's forward process and negative ELBO (docs/method.md), as pure jnp functions.

No Flax and no config here: the network enters only as a callable
`denoise(z_BxL, t_B) -> logits_BxLxV` and the schedule as an object from
`schedules.get_schedule`. Every loss is in nats per example.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


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
  """z_t: each token independently replaced by `mask_id` with probability 1 - alpha_t.

  Padding (token_mask == 0) is never masked, so it never enters the loss.
  """
  masked_BxL = jax.random.uniform(key, x0_BxL.shape) < mask_prob_B[:, None]
  if token_mask_BxL is not None:
    masked_BxL &= token_mask_BxL.astype(bool)
  return jnp.where(masked_BxL, mask_id, x0_BxL)


def token_nll(logits_xV, x0_x):
  """-log softmax(logits)[x0], in float32."""
  logits_xV = logits_xV.astype(jnp.float32)
  target_x = jnp.take_along_axis(logits_xV, x0_x[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits_xV, axis=-1) - target_x


def masked_cross_entropy(logits_BxLxV, x0_BxL, z_BxL, mask_id: int):
  """sum over masked positions of -log p(x0 | z_t), per example, in float32."""
  return jnp.sum(jnp.where(z_BxL == mask_id, token_nll(logits_BxLxV, x0_BxL), 0.0), axis=-1)


def gathered_masked_cross_entropy(h_BxLxD, head, x0_BxL, z_BxL, mask_id: int, *, capacity: int, groups: int = 1,
                                  token_loss=None, row_values_BxR=None):
  """`masked_cross_entropy(head(h), ...)`, applying `head` ([..., D] -> [..., V]) only at masked positions.

  token_loss(logits_NxV, x0_N, values_NxR) replaces -log p(x0) when given, values being each position's
  row of row_values_BxR (a per-example table, e.g. GenMD4's per-token rates).

  The B rows form `groups` contiguous blocks (one per batch shard, so gathers stay on
  their device); each block's first `capacity` masked positions are gathered to
  [capacity, D] before the output layer. When any block has more masked positions,
  every position goes through the layer instead (`lax.cond`), so the value is always
  the exact objective, only the cost changes.

  Returns:
    (nll_B summed over masked positions, 1.0 if the fallback ran else 0.0).
  """
  batch_size, length = z_BxL.shape
  rows = batch_size // groups
  masked_GxN = (z_BxL == mask_id).reshape(groups, rows * length)
  overflow = jnp.any(jnp.sum(masked_GxN, axis=-1) > capacity)
  if token_loss is None:
    token_loss, row_values_BxR = (lambda logits, x0, values: token_nll(logits, x0)), jnp.zeros((batch_size, 1))

  def gathered():
    def one_group(masked_N, h_NxD, x0_N, values_RxV):
      (index_C,) = jnp.nonzero(masked_N, size=capacity, fill_value=0)
      valid_C = jnp.arange(capacity) < jnp.sum(masked_N)
      row_C = index_C // length
      loss_C = jnp.where(valid_C, token_loss(head(h_NxD[index_C]), x0_N[index_C], values_RxV[row_C]), 0.0)
      return jax.ops.segment_sum(loss_C, row_C, num_segments=rows)

    loss_GxR = jax.vmap(one_group)(masked_GxN, h_BxLxD.reshape(groups, rows * length, -1),
                                   x0_BxL.reshape(groups, rows * length),
                                   row_values_BxR.reshape(groups, rows, -1))
    return loss_GxR.reshape(batch_size)

  def every_position():
    loss_BxL = token_loss(head(h_BxLxD), x0_BxL, row_values_BxR[:, None, :])
    return jnp.sum(jnp.where(z_BxL == mask_id, loss_BxL, 0.0), axis=-1)

  # Under autodiff a cond keeps the residuals of both branches (zeros for the one not taken); the
  # fallback's would be full [B, L, V] logits, so it recomputes them in its backward pass instead.
  return jax.lax.cond(overflow, jax.checkpoint(every_position), gathered), overflow.astype(jnp.float32)


def elbo_terms(denoise, x0_BxL, key, schedule, *, vocab_size: int, timesteps: int = 0,
               antithetic: bool = True, token_mask_BxL=None, head=None, capacity: int = 0, groups: int = 1,
               t_B=None):
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
    head: when given, `denoise` returns hidden states [B, L, D] and `head` maps them to
      logits, applied only at masked positions (see `gathered_masked_cross_entropy`).
    capacity: masked positions gathered per group of rows (with `head`).
    groups: contiguous row blocks gathered separately (with `head`).
    t_B: times in [0, 1) to use instead of drawing them.

  Returns:
    dict of [B] arrays: `diffusion`, `reconstruction`, `prior`, `loss` (their sum),
    `num_tokens` (real tokens per example, for per-token units) and, with `head`,
    `fallback` (scalar: 1.0 when every position went through the output layer).
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
  fallback = None
  if head is None:
    cross_entropy_B = masked_cross_entropy(denoise(z_BxL, t_B), x0_BxL, z_BxL, vocab_size)
  else:
    cross_entropy_B, fallback = gathered_masked_cross_entropy(
        denoise(z_BxL, t_B), head, x0_BxL, z_BxL, vocab_size, capacity=capacity, groups=groups)
  if timesteps:
    s_B = t_B - 1.0 / timesteps
    # T * E_i[(alpha_s - alpha_t) / (1 - alpha_t) * CE]: i drawn uniformly from T steps.
    coef_B = timesteps * (schedule.alpha(s_B) - schedule.alpha(t_B)) / mask_prob_B
  else:
    # polyK with K < 1 has an infinite weight at t = 0 (a point of measure zero, met about B 2^-23 times
    # per step): the term is 0 there, and the weight is never evaluated at 0, so no NaN and no NaN gradient.
    positive_B = t_B > 0
    coef_B = jnp.where(positive_B, -schedule.weight(jnp.where(positive_B, t_B, 1.0)), 0.0)
  log_v = jnp.log(float(vocab_size))
  terms = {
      "diffusion": coef_B * cross_entropy_B,
      # Tokens already masked at t=0 are predicted uniformly.
      "reconstruction": num_tokens_B * schedule.mask_prob(jnp.zeros(())) * log_v,
      # KL(q(z_1 | x0) || p(z_1)) with p(z_1) = mask w.p. 1 - alpha_1, else uniform over V.
      "prior": num_tokens_B * schedule.alpha(jnp.ones(())) * log_v,
  }
  terms["loss"] = terms["diffusion"] + terms["reconstruction"] + terms["prior"]
  terms["num_tokens"] = num_tokens_B
  if fallback is not None:
    terms["fallback"] = fallback
  return terms
