"""model.attention: which kernel runs where, and the fused cuDNN kernel computes the XLA form's function.

The cuDNN comparison needs a GPU: benchmarks/gpu_suite.sh runs this file there. On the CPU the selection
and the refusal are tested.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4_jax.data import modality
from md4_jax.engine import sharding
from md4_jax.engine.experiment import Experiment
from md4_jax.errors import UserError
from md4_jax.models.attention import CAUSAL, Mask, attention, attention_kernel
from tests import tiny_config

ON_GPU = jax.default_backend() == "gpu"


def test_auto_picks_cudnn_only_on_a_gpu_in_bfloat16_for_supported_head_sizes():
  assert attention_kernel("auto", "bfloat16", 64) == ("cudnn" if ON_GPU else "xla")
  assert attention_kernel("auto", "float32", 64) == "xla"  # cuDNN's fused kernel has no float32 path
  assert attention_kernel("auto", "bfloat16", 12) == "xla"  # head size not a multiple of 8
  assert attention_kernel("auto", "bfloat16", 256) == "xla"
  assert attention_kernel("xla", "bfloat16", 64) == "xla"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cudnn_where_it_cannot_run_is_a_config_error(dtype):
  if ON_GPU and dtype == "bfloat16":
    pytest.skip("cuDNN runs here")
  config = tiny_config.get_config()
  config.model.attention, config.model.dtype = "cudnn", dtype
  with pytest.raises(UserError, match=r"model.attention='cudnn' needs a GPU and model.dtype='bfloat16'"):
    Experiment(config, modality.Text(11, 16), sharding.make_mesh(config.mesh))


def test_an_unknown_kernel_is_a_config_error():
  config = tiny_config.get_config()
  config.model.attention = "flash"
  with pytest.raises(UserError, match=r"model.attention='flash': choose one of"):
    Experiment(config, modality.Text(11, 16), sharding.make_mesh(config.mesh))


@pytest.mark.skipif(not ON_GPU, reason="the cuDNN kernel needs a GPU (benchmarks/gpu_suite.sh runs this)")
@pytest.mark.parametrize("causal", [False, True])
def test_cudnn_attention_equals_the_xla_form(causal):
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, (2, 256, 4, 64), jnp.float32).astype(jnp.bfloat16) for key in keys)
  fused = jax.jit(lambda q, k, v: attention(q, k, v, causal=causal, kernel="cudnn"))(q, k, v)
  plain = jax.jit(lambda q, k, v: attention(q, k, v, causal=causal, kernel="xla"))(q, k, v)
  assert fused.dtype == plain.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(fused, np.float32), np.asarray(plain, np.float32), atol=2e-2, rtol=2e-2)
  # And gradients (the backward kernel is cuDNN's too).
  grad = lambda kernel: jax.jit(jax.grad(  # noqa: E731
      lambda q: jnp.sum(attention(q, k, v, causal=causal, kernel=kernel).astype(jnp.float32) ** 2)))(q)
  np.testing.assert_allclose(np.asarray(grad("cudnn"), np.float32), np.asarray(grad("xla"), np.float32),
                             atol=5e-2, rtol=5e-2)


def test_the_block_diffusion_mask_is_the_layout_of_docs_method():
  """L = 4, blocks of 2: rows/columns are z0 z1 z2 z3 | x0 x1 x2 x3 (z noised, x clean)."""
  expected = np.array([
      # z0 z1 z2 z3 x0 x1 x2 x3
      [1, 1, 0, 0, 0, 0, 0, 0],  # z block 0: itself only
      [1, 1, 0, 0, 0, 0, 0, 0],
      [0, 0, 1, 1, 1, 1, 0, 0],  # z block 1: itself and x block 0
      [0, 0, 1, 1, 1, 1, 0, 0],
      [0, 0, 0, 0, 1, 1, 0, 0],  # x block 0: x blocks <= 0
      [0, 0, 0, 0, 1, 1, 0, 0],
      [0, 0, 0, 0, 1, 1, 1, 1],  # x block 1: x blocks <= 1
      [0, 0, 0, 0, 1, 1, 1, 1],
  ], bool)
  np.testing.assert_array_equal(Mask("block_diffusion", 2).allowed(8), expected)
  np.testing.assert_array_equal(Mask("block_causal", 2).allowed(4), expected[4:, 4:])
  np.testing.assert_array_equal(CAUSAL.allowed(3), np.tril(np.ones((3, 3), bool)))


@pytest.mark.parametrize("mask", [Mask("block_causal", 3), Mask("block_diffusion", 2)], ids=lambda m: m.kind)
def test_block_masks_equal_the_library_kernel_with_the_same_mask(mask):
  q, k, v = (jax.random.normal(key, (2, 12, 3, 8)) for key in jax.random.split(jax.random.key(0), 3))
  expected = jax.nn.dot_product_attention(q, k, v, mask=mask.allowed(12)[None, None])
  np.testing.assert_allclose(attention(q, k, v, mask=mask), expected, rtol=1e-5, atol=1e-6)
