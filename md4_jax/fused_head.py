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
  """Rows per block: all of them when their logits fit the backend's block, else a multiple of 64 that does."""
  elements = BLOCK_ELEMENTS if jax.default_backend() == "cpu" else ACCELERATOR_BLOCK_ELEMENTS
  rows = max(64, elements // vocab_size // 64 * 64)
  return num_rows if num_rows <= rows else rows


def _logits(h_NxD, kernel_DxV):
  # The kernel is cast to the activations' dtype (a bfloat16 matmul in bfloat16 runs); the logits are float32.
  return jnp.matmul(h_NxD, kernel_DxV.astype(h_NxD.dtype), preferred_element_type=jnp.float32)


def _block_loss(token_loss, h_NxD, kernel_DxV, table_RxK, x0_N, row_N):
  return token_loss(_logits(h_NxD, kernel_DxV), x0_N, table_RxK[row_N])


def _blocks(x, rows: int):
  """[N, ...] -> [N / rows, rows, ...], zero-padded to a whole number of blocks."""
  pad = -x.shape[0] % rows
  x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape(x.shape[0] // rows, rows, *x.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 6))
def _head_loss(token_loss, h_NxD, kernel_DxV, table_RxK, x0_N, row_N, rows):
  return _forward(token_loss, h_NxD, kernel_DxV, table_RxK, x0_N, row_N, rows)[0]


def _forward(token_loss, h_NxD, kernel_DxV, table_RxK, x0_N, row_N, rows):
  def one_block(_, block):
    h, x0, row = block
    return None, _block_loss(token_loss, h, kernel_DxV, table_RxK, x0, row)

  _, loss_BxR = jax.lax.scan(one_block, None, (_blocks(h_NxD, rows), _blocks(x0_N, rows), _blocks(row_N, rows)))
  return loss_BxR.reshape(-1)[: h_NxD.shape[0]], (h_NxD, kernel_DxV, table_RxK, x0_N, row_N)


def _backward(token_loss, rows, residuals, dloss_N):
  h_NxD, kernel_DxV, table_RxK, x0_N, row_N = residuals

  def one_block(carry, block):
    dkernel, dtable = carry
    h, x0, row, dloss = block
    _, pullback = jax.vjp(lambda h, kernel, table: _block_loss(token_loss, h, kernel, table, x0, row),
                          h, kernel_DxV, table_RxK)
    dh, dkernel_block, dtable_block = pullback(dloss)
    return (dkernel + dkernel_block, dtable + dtable_block), dh

  zeros = (jnp.zeros_like(kernel_DxV), jnp.zeros_like(table_RxK))
  blocks = (_blocks(h_NxD, rows), _blocks(x0_N, rows), _blocks(row_N, rows), _blocks(dloss_N, rows))
  (dkernel, dtable), dh_BxRxD = jax.lax.scan(one_block, zeros, blocks)
  dh_NxD = dh_BxRxD.reshape(-1, h_NxD.shape[-1])[: h_NxD.shape[0]]
  return dh_NxD, dkernel, dtable, None, None


_head_loss.defvjp(_forward, _backward)


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
  return _head_loss(token_loss, h_NxD, kernel_DxV, table_RxK, x0_N, row_N.astype(jnp.int32), rows)
