"""Block diffusion's attention through Pallas splash attention (models/splash_attention.py), run by Pallas's
interpreter on the CPU: the TPU kernel's program, checked against the dense masked form."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4_jax.core.attention_masks import Mask
from md4_jax.models import attention as attention_lib
from md4_jax.models import splash_attention


@pytest.mark.parametrize("length, block_size", [(64, 4), (64, 1)])
def test_values_and_gradients_equal_the_dense_form(length, block_size):
  keys = jax.random.split(jax.random.key(length + block_size), 4)
  q, k, v = (jax.random.normal(key, (2, 2 * length, 2, 16)) for key in keys[:3])
  cotangent = jax.random.normal(keys[3], q.shape)
  splash = jax.jit(functools.partial(splash_attention.splash_block_diffusion_attention, block_size=block_size,
                                     interpret=True))
  dense = functools.partial(attention_lib._attention, mask=Mask("block_diffusion", block_size))
  np.testing.assert_allclose(splash(q, k, v), dense(q, k, v), atol=1e-5, rtol=1e-5)
  ours = jax.grad(lambda q, k, v: jnp.sum(splash(q, k, v) * cotangent), argnums=(0, 1, 2))(q, k, v)
  theirs = jax.grad(lambda q, k, v: jnp.sum(dense(q, k, v) * cotangent), argnums=(0, 1, 2))(q, k, v)
  for got, want in zip(ours, theirs):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_the_splash_kernel_takes_block_diffusion_masks_whose_length_fits_its_tiles(monkeypatch):
  calls = []
  monkeypatch.setattr(splash_attention, "splash_block_diffusion_attention",
                      lambda q, k, v, block_size: calls.append((q.shape[1], block_size)) or q)
  mask = Mask("block_diffusion", 4)
  for length in (128, 24):  # 24 positions: not whole tiles of 128, so the chunked form
    q = jnp.ones((1, length, 2, 8))
    attention_lib.attention(q, q, q, mask=mask, kernel="splash")
  attention_lib.attention(jnp.ones((1, 128, 2, 8)), jnp.ones((1, 128, 2, 8)), jnp.ones((1, 128, 2, 8)),
                          kernel="splash")  # no mask: the XLA form
  assert calls == [(128, 4)]


def test_splash_is_refused_off_a_tpu_and_auto_does_not_pick_it_here():
  with pytest.raises(ValueError, match="model.attention='splash'.*needs a TPU"):
    attention_lib.check_attention("splash", "float32")
  assert attention_lib.attention_kernel("auto", "float32", 16) == "xla"
  with pytest.raises(ValueError, match="multiple of 128"):
    splash_attention.splash_block_diffusion_attention(*[jnp.ones((1, 24, 2, 8))] * 3, 4, interpret=True)
