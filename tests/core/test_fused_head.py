"""The output layer fused with the loss (md4_jax/core/fused_head.py) computes what the plain layer and loss compute:
values and gradients, for MD4 (masked-position gather on and off), GenMD4 and the AR baseline, in float32 and
bfloat16; and the memory-lean custom gradients of the transformer's norms and GLU equal autodiff's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import head_cost
from md4_jax import models
from md4_jax.core import fused_head
from md4_jax.data.modality import Text
from md4_jax.engine import sharding
from md4_jax.engine.experiment import Experiment
from md4_jax.models import attention as attention_lib
from md4_jax.models import layers
from tests.conftest import make_config

V = 1100  # above objectives.md4.GATHER_MIN_VOCAB, so the automatic capacity gathers too


def assert_gradients_close(grads, expected_grads, tolerance):
  """Same dtypes and shapes, and values within `tolerance` of each expected gradient's largest entry."""
  for grad, expected in zip(grads, expected_grads, strict=True):
    assert grad.dtype == expected.dtype and grad.shape == expected.shape
    scale = float(jnp.max(jnp.abs(expected.astype(jnp.float32))))
    np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(expected, np.float32),
                               atol=tolerance * scale, rtol=tolerance)


def table_loss(logits_NxV, x0_N, values_NxV):
  """A loss that reads a per-row table as GenMD4's does: cross-entropy plus a table-weighted softmax mass."""
  return fused_head.cross_entropy(logits_NxV, x0_N, None) + jnp.sum(values_NxV * jax.nn.softmax(logits_NxV), -1)


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_head_loss_equals_the_plain_layer_and_loss_over_several_blocks(monkeypatch, dtype, tolerance):
  monkeypatch.setattr(fused_head, "BLOCK_ELEMENTS", 128 * V)  # 128 rows per block: 300 rows -> 3 blocks, padded
  keys = jax.random.split(jax.random.key(0), 5)
  h = jax.random.normal(keys[0], (300, 16)).astype(dtype)
  kernel = jax.random.normal(keys[1], (16, V)) * 0.3
  x0 = jax.random.randint(keys[2], (300,), 0, V)
  row = jax.random.randint(keys[3], (300,), 0, 4)
  table = jax.random.uniform(keys[4], (4, V))
  weights = jnp.arange(300.0)
  assert fused_head.block_rows(300, V) == 128

  def fused(h, kernel, table):
    return jnp.sum(fused_head.head_loss(h, kernel, x0, token_loss=table_loss, row_N=row, table_RxK=table) * weights)

  def plain(h, kernel, table):
    logits = jnp.matmul(h, kernel.astype(h.dtype), preferred_element_type=jnp.float32)
    return jnp.sum(table_loss(logits, x0, table[row]) * weights)

  value, grads = jax.value_and_grad(fused, argnums=(0, 1, 2))(h, kernel, table)
  expected, expected_grads = jax.value_and_grad(plain, argnums=(0, 1, 2))(h, kernel, table)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  assert_gradients_close(grads, expected_grads, tolerance)


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_cross_entropy_pass_equals_the_plain_layer_and_the_generic_pass(monkeypatch, dtype, tolerance):
  """Cross-entropy's own pass (padded columns at -inf, kept log-normaliser): the plain layer's values and
  gradients over several padded blocks, and the generic pass's to rounding. V = 1100 pads to 1152 columns, so
  padding that leaked into the softmax or the kernel's gradient would show."""
  monkeypatch.setattr(fused_head, "BLOCK_ELEMENTS", 128 * V)
  keys = jax.random.split(jax.random.key(1), 3)
  h = (2.0 * jax.random.normal(keys[0], (300, 16))).astype(dtype)
  kernel = jax.random.normal(keys[1], (16, V)) * 0.3
  x0 = jax.random.randint(keys[2], (300,), 0, V).at[:3].set(jnp.array([0, V - 1, V - 2]))
  weights = jnp.arange(300.0) - 100.0  # negative, zero and positive cotangents

  def fused(token_loss):
    return lambda h, kernel: jnp.sum(fused_head.head_loss(h, kernel, x0, token_loss=token_loss) * weights)

  def plain(h, kernel):
    logits = jnp.matmul(h, kernel.astype(h.dtype), preferred_element_type=jnp.float32)
    return jnp.sum(fused_head.token_nll(logits, x0) * weights)

  results = [jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(h, kernel)
             for f in (fused(fused_head.cross_entropy), fused(head_cost.generic_cross_entropy), plain)]
  (value, grads), (generic_value, generic_grads), (expected, expected_grads) = results
  for other_value, other_grads in ((expected, expected_grads), (generic_value, generic_grads)):
    np.testing.assert_allclose(value, other_value, rtol=1e-5)
    assert_gradients_close(grads, other_grads, tolerance)


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_weighted_nll_makes_the_plain_layers_gradient_in_its_forward_pass(monkeypatch, dtype, tolerance):
  """The weighted sum's value and gradients (hidden states, kernel, weights) are the plain layer's, over several
  padded blocks and under an outer scale (the loss's cotangent); the per-position losses are the plain ones and
  carry no gradient."""
  monkeypatch.setattr(fused_head, "BLOCK_ELEMENTS", 128 * V)
  keys = jax.random.split(jax.random.key(3), 4)
  h = (2.0 * jax.random.normal(keys[0], (300, 16))).astype(dtype)
  kernel = jax.random.normal(keys[1], (16, V)) * 0.3
  x0 = jax.random.randint(keys[2], (300,), 0, V)
  weight = jnp.where(jax.random.uniform(keys[3], (300,)) < 0.5, jnp.arange(300.0) / 7, 0.0)

  def fused(h, kernel, weight):
    total, nll = fused_head.weighted_nll(h, kernel, x0, weight)
    return 0.37 * total + jnp.sum(nll), nll  # nll's gradient is stopped: only the total's counts

  def plain(h, kernel, weight):
    nll = fused_head.token_nll(jnp.matmul(h, kernel.astype(h.dtype), preferred_element_type=jnp.float32), x0)
    return 0.37 * jnp.sum(weight * nll) + jax.lax.stop_gradient(jnp.sum(nll)), nll

  (value, nll), grads = jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 2), has_aux=True))(h, kernel, weight)
  (expected, expected_nll), expected_grads = jax.value_and_grad(plain, argnums=(0, 1, 2), has_aux=True)(
      h, kernel, weight)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  np.testing.assert_allclose(nll, expected_nll, rtol=1e-5, atol=1e-5)
  assert_gradients_close(grads, expected_grads, tolerance)


def test_blocks_are_the_fewest_that_fit_balanced_to_under_128_padding_rows_each(monkeypatch):
  monkeypatch.setattr(fused_head, "BLOCK_ELEMENTS", 1 << 28)  # the accelerators' block, on this backend
  most = (1 << 28) // 50257 // 128 * 128  # 5,248 rows
  for num_rows in (1, 300, most, most + 1, 36864, 65536, 10**6):
    rows = fused_head.block_rows(num_rows, 50257)
    blocks = -(-num_rows // rows)
    assert rows <= most  # every block's logits fit
    assert blocks == -(-num_rows // most)  # no more blocks than needed
    assert rows == num_rows or (rows % 128 == 0 and blocks * rows - num_rows < 128 * blocks)
  assert fused_head.block_rows(65536, 50257) == 5120  # 1,024 padding rows, not 2,688 (blocks of 5,248)


class Plain(models.Network):
  """The same network, seen by the objectives as one without a separate output layer: full logits, plain loss."""

  splits_head = False


def objective_loss(config, fused: bool, capacity_fraction: float):
  """(loss, gradient w.r.t. the parameters) of one training estimate of the objective on fixed data."""
  experiment = Experiment(config, Text(V, config.data.seq_len), sharding.make_mesh(config.mesh))
  graphdef, params = nnx.split(experiment.make_model(nnx.Rngs(3)))
  params = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(jax.random.key(7), x.shape, x.dtype), params)
  x0 = jax.random.randint(jax.random.key(5), (4, config.data.seq_len), 0, V)
  objective = experiment.objective

  def loss(params):
    network = (models.Network if fused else Plain)(nnx.merge(graphdef, params))
    terms = objective.terms(network, x0, jax.random.key(11), token_mask_BxL=jnp.ones_like(x0), timesteps=0,
                            capacity_fraction=capacity_fraction, groups=2, training=True)
    return jnp.sum(terms.get("surrogate", terms["loss"]))

  return jax.value_and_grad(loss)(params)


@pytest.mark.slow
@pytest.mark.parametrize("objective, capacity_fraction", [("md4", 1.0), ("md4", 0.6), ("md4", 0.1), ("genmd4", 0.6),
                                                          ("genmd4", 1.0), ("ar", 1.0)])
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_objectives_through_the_fused_layer_equal_the_plain_ones(objective, capacity_fraction, dtype, tolerance):
  """capacity 0.6 gathers the masked positions; 0.1 overflows into the every-position fallback."""
  config = make_config("unused.txt", objective=objective, model__dtype=dtype, data__seq_len=16)
  value, grads = objective_loss(config, True, capacity_fraction)
  expected, expected_grads = objective_loss(config, False, capacity_fraction)
  np.testing.assert_allclose(value, expected, rtol=tolerance)
  for (path, grad), expected_grad in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(expected_grads)):
    scale = float(jnp.max(jnp.abs(expected_grad)))
    np.testing.assert_allclose(grad, expected_grad, atol=tolerance * max(scale, 1e-6), rtol=tolerance,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_rms_norm_and_glu_gradients_are_autodiffs(dtype, tolerance):
  keys = jax.random.split(jax.random.key(2), 5)
  x = (3.0 * jax.random.normal(keys[0], (4, 5, 32))).astype(dtype)
  scale = 1.0 + 0.1 * jax.random.normal(keys[1], (32,))
  gate, up = (jax.random.normal(key, (4, 5, 32)).astype(dtype) for key in keys[2:4])
  cotangent = jax.random.normal(keys[4], (4, 5, 32))

  def autodiff_norm(x, scale):
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + 1e-6) * scale).astype(x.dtype)

  cases = [(layers.rms_norm, autodiff_norm, (x, scale)),
           (layers.silu_glu, lambda g, u: jax.nn.silu(g) * u, (gate, up))]
  for written, plain, args in cases:
    def loss(f):
      return lambda *a: jnp.sum(f(*a).astype(jnp.float32) * cotangent)

    np.testing.assert_allclose(np.asarray(written(*args), np.float32), np.asarray(plain(*args), np.float32),
                               rtol=tolerance, atol=tolerance)
    for mine, reference in zip(jax.grad(loss(written), argnums=(0, 1))(*args),
                               jax.grad(loss(plain), argnums=(0, 1))(*args)):
      assert mine.dtype == reference.dtype
      np.testing.assert_allclose(np.asarray(mine, np.float32), np.asarray(reference, np.float32),
                                 rtol=tolerance, atol=tolerance * float(jnp.max(jnp.abs(reference))))


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True])
def test_attention_over_head_groups_is_the_same_function_and_gradient(monkeypatch, causal):
  """Scores too large for one block run in groups of heads (here 3 groups of 2): same values and gradients."""
  keys = jax.random.split(jax.random.key(4), 4)
  q, k, v = (jax.random.normal(key, (2, 9, 6, 8)) for key in keys[:3])
  cotangent = jax.random.normal(keys[3], (2, 9, 6, 8))

  def loss(q, k, v):
    return jnp.sum(attention_lib.attention(q, k, v, causal=causal) * cotangent)

  whole = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)
  monkeypatch.setattr(attention_lib, "SCORE_BLOCK_ELEMENTS", 2 * 2 * 9 * 9)
  assert attention_lib.head_groups(2, 6, 9) == 3
  grouped = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)
  library = jax.value_and_grad(lambda q, k, v: jnp.sum(jax.nn.dot_product_attention(q, k, v, is_causal=causal)
                                                       * cotangent), argnums=(0, 1, 2))(q, k, v)
  for result in (grouped, whole):
    np.testing.assert_allclose(result[0], library[0], rtol=1e-5)
    for mine, reference in zip(result[1], library[1]):
      np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-5)


def test_the_head_cost_benchmark_runs_and_the_cross_entropy_pass_moves_fewer_bytes():
  """benchmarks/head_cost.py on a tiny shape: both passes run, and XLA counts fewer bytes for cross-entropy's own
  pass (no re-reduction of the logits, no slice or pad of them) than for the generic one."""
  record = head_cost.measure(rows=200, width=16, vocab=300, dtype=jnp.float32, repeats=1)
  assert record["cross_entropy_seconds"] > 0 and record["generic_seconds"] > 0 and record["weighted_seconds"] > 0
  assert record["cross_entropy_bytes_ratio"] < 0.9, record
