"""The output layer and a per-position loss, fused and chunked: never a [positions, vocabulary] float32 array.

A text model's output layer maps N hidden states [N, D] to logits [N, V]; at V = 50,257 those logits (float32,
plus the softmax and the gradient autodiff keeps for the backward pass) are the largest arrays of a train step.
`head_loss` runs the layer and the loss over blocks of rows (a `lax.scan`) and keeps only the hidden states,
the kernel and the small per-position inputs for its backward pass, which recomputes each block's logits and
takes that block's gradient (the "cut cross-entropy" idea: Wijmans et al. 2024). Values and gradients are
autodiff's up to summation order.

The loss of a position is `token_loss(logits_NxV, x0_N, values_NxK)`: cross-entropy for MD4 and the AR
baseline, GenMD4's integrand with its per-class rates. `values` come from a per-row table [R, K] looked up by
each position's row inside the block, so a GenMD4 table [B, V] is never expanded to [N, V] either.

Cross-entropy (MD4 and the AR baseline: the every-position step of a text model) has its own pass,
`_head_nll`, written for memory traffic: the logits stay the padded kernel's width W with the padding columns at
-inf (no slice of them, no pad of their gradient), and the forward keeps each row's log-normaliser, so the
backward turns the recomputed logits into their gradient in one elementwise pass instead of reducing them again.
On a GPU every pass over a block's [rows, W] float32 logits is a gigabyte of traffic.

Training MD4 knows each position's weight in the loss before the layer runs (the bound's weight of its example,
0 where unmasked), so `weighted_nll` takes the weights and makes the gradient in the forward pass, block by
block, while the logits are at hand: three matmuls per block instead of four (no recomputed logits), and the
backward pass only scales what the forward kept by the loss's cotangent (the idea of Liger Kernel's fused linear
cross-entropy, Hsu et al. 2024).
"""

import functools

import jax
import jax.numpy as jnp

# Logits per block. CPU: 128 MiB in float32 (V = 50,257: 640 rows). GPU/TPU: 1 GiB (5,312 rows), so the few
# large matmuls keep the device busy (a loop step costs tens of microseconds there).
BLOCK_ELEMENTS = 1 << 25
ACCELERATOR_BLOCK_ELEMENTS = 1 << 28


def token_nll(logits_xV, x0_x):
  """-log softmax(logits)[x0], in float32."""
  logits_xV = logits_xV.astype(jnp.float32)
  target_x = jnp.take_along_axis(logits_xV, x0_x[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits_xV, axis=-1) - target_x


def cross_entropy(logits_NxV, x0_N, values_NxK):
  """The default token_loss: -log softmax(logits)[x0] (values unused)."""
  del values_NxK
  return token_nll(logits_NxV, x0_N)


def block_rows(num_rows: int, vocab_size: int) -> int:
  """Rows per block: all of them when their logits fit the backend's block, else the fewest blocks that fit,
  balanced and rounded up to a multiple of 128 rows, so the zero rows padding the last block are fewer than 128
  per block (65,536 positions at V = 50,257 on a GPU: 13 blocks of 5,120, not 13 of 5,312 with 3,520 padding)."""
  elements = BLOCK_ELEMENTS if jax.default_backend() == "cpu" else ACCELERATOR_BLOCK_ELEMENTS
  most = max(128, elements // vocab_size // 128 * 128)
  if num_rows <= most:
    return num_rows
  blocks = -(-num_rows // most)
  return -(-num_rows // (blocks * 128)) * 128


VOCAB_MULTIPLE = 128  # the kernel's columns are zero-padded to this for the matmuls (an aligned GEMM is ~2x faster)


def _matmul_kernel(kernel_DxV, dtype):
  """The kernel as the matmuls read it: in the activations' dtype (a bfloat16 GEMM in bfloat16 runs), its
  columns zero-padded to a multiple of VOCAB_MULTIPLE (50,257 -> 50,304; the padded logits are sliced off)."""
  return jnp.pad(kernel_DxV, ((0, 0), (0, -kernel_DxV.shape[-1] % VOCAB_MULTIPLE))).astype(dtype)


def _logits(h_NxD, kernel_DxW, vocab_size: int):
  """float32 logits [N, V] of the padded kernel [D, W >= V]."""
  return jnp.matmul(h_NxD, kernel_DxW, preferred_element_type=jnp.float32)[:, :vocab_size]


def _padded_logits(h_NxD, kernel_DxW, vocab_size: int):
  """float32 logits [N, W] of the padded kernel, the W - V padding columns at -inf (softmax gives them 0)."""
  logits_NxW = jnp.matmul(h_NxD, kernel_DxW, preferred_element_type=jnp.float32)
  return jnp.where(jnp.arange(kernel_DxW.shape[-1]) < vocab_size, logits_NxW, -jnp.inf)


def _blocks(x, rows: int):
  """[N, ...] -> [N / rows, rows, ...], zero-padded to a whole number of blocks."""
  pad = -x.shape[0] % rows
  x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape(x.shape[0] // rows, rows, *x.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 6))
def _head_loss(token_loss, h_NxD, kernel_DxV, table_RxK, x0_N, row_N, rows):
  return _forward(token_loss, h_NxD, kernel_DxV, table_RxK, x0_N, row_N, rows)[0]


def _forward(token_loss, h_NxD, kernel_DxV, table_RxK, x0_N, row_N, rows):
  kernel_DxW, vocab_size = _matmul_kernel(kernel_DxV, h_NxD.dtype), kernel_DxV.shape[-1]

  def one_block(_, block):
    h, x0, row = block
    return None, token_loss(_logits(h, kernel_DxW, vocab_size), x0, table_RxK[row])

  _, loss_BxR = jax.lax.scan(one_block, None, (_blocks(h_NxD, rows), _blocks(x0_N, rows), _blocks(row_N, rows)))
  return loss_BxR.reshape(-1)[: h_NxD.shape[0]], (h_NxD, kernel_DxV, table_RxK, x0_N, row_N)


def _backward(token_loss, rows, residuals, dloss_N):
  """Per block: the logits again, the loss's gradient w.r.t. them (float32), then the two products of the
  layer's gradient with that gradient rounded to the activations' dtype (bfloat16 GEMMs in bfloat16 runs, as
  mixed-precision training does; float32 runs round nothing), accumulating the kernel's gradient in float32."""
  h_NxD, kernel_DxV, table_RxK, x0_N, row_N = residuals
  kernel_DxW, vocab_size = _matmul_kernel(kernel_DxV, h_NxD.dtype), kernel_DxV.shape[-1]

  def one_block(carry, block):
    dkernel_DxW, dtable_RxK = carry
    h_NxD, x0_N, row_N, dloss_N = block
    _, pullback = jax.vjp(lambda logits, table: token_loss(logits, x0_N, table[row_N]),
                          _logits(h_NxD, kernel_DxW, vocab_size), table_RxK)
    dlogits_NxV, dtable_block = pullback(dloss_N)
    dlogits_NxW = jnp.pad(dlogits_NxV, ((0, 0), (0, kernel_DxW.shape[-1] - vocab_size))).astype(h_NxD.dtype)
    dh_NxD = jnp.matmul(dlogits_NxW, kernel_DxW.T, preferred_element_type=jnp.float32).astype(h_NxD.dtype)
    dkernel_DxW += jnp.matmul(h_NxD.T, dlogits_NxW, preferred_element_type=jnp.float32)
    return (dkernel_DxW, dtable_RxK + dtable_block), dh_NxD

  zeros = (jnp.zeros(kernel_DxW.shape, jnp.float32), jnp.zeros_like(table_RxK))
  blocks = (_blocks(h_NxD, rows), _blocks(x0_N, rows), _blocks(row_N, rows), _blocks(dloss_N, rows))
  (dkernel_DxW, dtable_RxK), dh_BxRxD = jax.lax.scan(one_block, zeros, blocks)
  dh_NxD = dh_BxRxD.reshape(-1, h_NxD.shape[-1])[: h_NxD.shape[0]]
  return dh_NxD, dkernel_DxW[:, :vocab_size].astype(kernel_DxV.dtype), dtable_RxK, None, None


_head_loss.defvjp(_forward, _backward)


def _block_nll(h_RxD, kernel_DxW, x0_R, vocab_size: int):
  """A block's (padded logits [R, W] float32, log-normaliser [R], -log p(x0) [R])."""
  logits_RxW = _padded_logits(h_RxD, kernel_DxW, vocab_size)
  lse_R = jax.nn.logsumexp(logits_RxW, axis=-1)
  return logits_RxW, lse_R, lse_R - jnp.take_along_axis(logits_RxW, x0_R[:, None], axis=-1)[:, 0]


def _block_gradients(h_RxD, kernel_DxW, logits_RxW, lse_R, x0_R, scale_R):
  """The gradients of sum_r scale_r nll_r w.r.t. a block's hidden states (float32 [R, D]) and the padded kernel
  (float32 [D, W]): the logit gradient (softmax - one-hot) x scale in one elementwise pass from the kept
  log-normaliser, rounded to the activations' dtype for the two GEMMs (bfloat16 GEMMs in bfloat16 runs, as in
  `_backward`)."""
  columns_W = jnp.arange(kernel_DxW.shape[-1])
  softmax_RxW = jnp.exp(logits_RxW - lse_R[:, None])
  dlogits_RxW = ((softmax_RxW - (columns_W == x0_R[:, None])) * scale_R[:, None]).astype(h_RxD.dtype)
  return (jnp.matmul(dlogits_RxW, kernel_DxW.T, preferred_element_type=jnp.float32),
          jnp.matmul(h_RxD.T, dlogits_RxW, preferred_element_type=jnp.float32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _head_nll(h_NxD, kernel_DxV, x0_N, rows):
  return _nll_forward(h_NxD, kernel_DxV, x0_N, rows)[0]


def _nll_forward(h_NxD, kernel_DxV, x0_N, rows):
  kernel_DxW, vocab_size = _matmul_kernel(kernel_DxV, h_NxD.dtype), kernel_DxV.shape[-1]

  def one_block(_, block):
    h_RxD, x0_R = block
    _, lse_R, nll_R = _block_nll(h_RxD, kernel_DxW, x0_R, vocab_size)
    return None, (nll_R, lse_R)

  _, (nll_BxR, lse_BxR) = jax.lax.scan(one_block, None, (_blocks(h_NxD, rows), _blocks(x0_N, rows)))
  num_rows = h_NxD.shape[0]
  return nll_BxR.reshape(-1)[:num_rows], (h_NxD, kernel_DxV, x0_N, lse_BxR.reshape(-1)[:num_rows])


def _nll_backward(rows, residuals, dnll_N):
  """Per block: the logits again, then their gradient from the kept log-normaliser (`_block_gradients`)."""
  h_NxD, kernel_DxV, x0_N, lse_N = residuals
  kernel_DxW, vocab_size = _matmul_kernel(kernel_DxV, h_NxD.dtype), kernel_DxV.shape[-1]

  def one_block(dkernel_DxW, block):
    h_RxD, x0_R, lse_R, dnll_R = block
    logits_RxW = _padded_logits(h_RxD, kernel_DxW, vocab_size)
    dh_RxD, dkernel_block = _block_gradients(h_RxD, kernel_DxW, logits_RxW, lse_R, x0_R, dnll_R)
    return dkernel_DxW + dkernel_block, dh_RxD.astype(h_RxD.dtype)

  blocks = (_blocks(h_NxD, rows), _blocks(x0_N, rows), _blocks(lse_N, rows), _blocks(dnll_N, rows))
  dkernel_DxW, dh_BxRxD = jax.lax.scan(one_block, jnp.zeros(kernel_DxW.shape, jnp.float32), blocks)
  dh_NxD = dh_BxRxD.reshape(-1, h_NxD.shape[-1])[: h_NxD.shape[0]]
  return dh_NxD, dkernel_DxW[:, :vocab_size].astype(kernel_DxV.dtype), None


_head_nll.defvjp(_nll_forward, _nll_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _weighted_nll(h_NxD, kernel_DxV, x0_N, weight_N, rows):
  return _weighted_forward(h_NxD, kernel_DxV, x0_N, weight_N, rows)[0]


def _weighted_forward(h_NxD, kernel_DxV, x0_N, weight_N, rows):
  """(sum of weight x nll, nll_N) and, for the backward pass, that sum's gradients w.r.t. h (float32) and the
  kernel, made per block while its logits are at hand."""
  kernel_DxW, vocab_size = _matmul_kernel(kernel_DxV, h_NxD.dtype), kernel_DxV.shape[-1]

  def one_block(dkernel_DxW, block):
    h_RxD, x0_R, weight_R = block
    logits_RxW, lse_R, nll_R = _block_nll(h_RxD, kernel_DxW, x0_R, vocab_size)
    dh_RxD, dkernel_block = _block_gradients(h_RxD, kernel_DxW, logits_RxW, lse_R, x0_R, weight_R)
    return dkernel_DxW + dkernel_block, (nll_R, dh_RxD)

  blocks = (_blocks(h_NxD, rows), _blocks(x0_N, rows), _blocks(weight_N, rows))
  dkernel_DxW, (nll_BxR, dh_BxRxD) = jax.lax.scan(one_block, jnp.zeros(kernel_DxW.shape, jnp.float32), blocks)
  num_rows = h_NxD.shape[0]
  nll_N, dh_NxD = nll_BxR.reshape(-1)[:num_rows], dh_BxRxD.reshape(-1, h_NxD.shape[-1])[:num_rows]
  # The two zero-size arrays carry h's and the kernel's dtypes to the backward pass.
  residuals = (dh_NxD, dkernel_DxW[:, :vocab_size], nll_N, h_NxD[:0, :0], kernel_DxV[:0, :0])
  return (jnp.sum(weight_N * nll_N), nll_N), residuals


def _weighted_backward(rows, residuals, cotangents):
  """The forward's gradients scaled by the sum's cotangent. nll_N's cotangent is ignored: `weighted_nll` stops
  its gradient, so it is always zero here."""
  del rows
  dh_NxD, dkernel_DxV, nll_N, h_marker, kernel_marker = residuals
  dtotal, _ = cotangents
  return ((dtotal * dh_NxD).astype(h_marker.dtype), (dtotal * dkernel_DxV).astype(kernel_marker.dtype), None,
          dtotal * nll_N)


_weighted_nll.defvjp(_weighted_forward, _weighted_backward)


def weighted_nll(h_NxD, kernel_DxV, x0_N, weight_N):
  """(sum_i weight_N[i] nll_i, nll_N) with nll_i = -log softmax(h_NxD @ kernel_DxV)[i, x0_N[i]], block by block.

  Only the sum carries a gradient (nll_N is for metrics), and that gradient is made in the forward pass: call
  it where the weights are known and the sum is what is differentiated (MD4's training loss).
  """
  num_rows = h_NxD.shape[0]
  if num_rows == 0:
    return jnp.zeros((), jnp.float32), jnp.zeros((0,), jnp.float32)
  rows = block_rows(num_rows, kernel_DxV.shape[-1])
  total, nll_N = _weighted_nll(h_NxD, kernel_DxV, x0_N, weight_N.astype(jnp.float32), rows)
  return total, jax.lax.stop_gradient(nll_N)


def head_loss(h_NxD, kernel_DxV, x0_N, *, token_loss=cross_entropy, row_N=None, table_RxK=None):
  """[N] float32: token_loss(h_NxD @ kernel_DxV, x0_N, table_RxK[row_N]) per position, block by block.

  h_NxD: hidden states (any float dtype; the matmul runs in it, the logits are float32). row_N: each
  position's row of table_RxK (default: no table, zeros).
  """
  num_rows = h_NxD.shape[0]
  if table_RxK is None:
    table_RxK, row_N = jnp.zeros((1, 1), jnp.float32), jnp.zeros((num_rows,), jnp.int32)
  if num_rows == 0:
    return jnp.zeros((0,), jnp.float32)
  rows = block_rows(num_rows, kernel_DxV.shape[-1])
  if token_loss is cross_entropy:  # the table is unused: the lean pass above
    return _head_nll(h_NxD, kernel_DxV, x0_N, rows)
  return _head_loss(token_loss, h_NxD, kernel_DxV, table_RxK, x0_N, row_N.astype(jnp.int32), rows)
