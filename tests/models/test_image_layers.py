"""The image backbones' convolution on the CPU: its written-out gradient is autodiff's, and it keeps every
backward convolution in XLA:CPU's canonical form inside loops (scanned steps, gradient accumulation), where
autodiff's own kernel gradient ran 20-60x slower."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common
from md4_jax.engine import sharding
from md4_jax.models import image_layers
from tests import tiny_image_config
from tests.conftest import override

CANONICAL = "b01f_01io->b01f"  # NHWC input, HWIO kernel, NHWC output


def autodiff_conv(x_BxHxWxC, kernel_KxKxCxO, stride):
  return jax.lax.conv_general_dilated(x_BxHxWxC, kernel_KxKxCxO, (stride, stride), "SAME" if stride == 1 else "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("kernel, stride, size", [(3, 1, 8), (2, 1, 7), (1, 1, 6), (5, 1, 9), (2, 2, 8), (4, 4, 16)])
def test_values_and_gradients_are_autodiffs(kernel, stride, size):
  keys = jax.random.split(jax.random.key(kernel * 10 + stride), 3)
  x = jax.random.normal(keys[0], (3, size, size, 5))
  w = jax.random.normal(keys[1], (kernel, kernel, 5, 6))
  cotangent = jax.random.normal(keys[2], autodiff_conv(x, w, stride).shape)

  def gradients(conv):
    return jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w, stride) * cotangent), (0, 1)))(x, w)

  np.testing.assert_allclose(image_layers.conv2d(x, w, stride), autodiff_conv(x, w, stride), rtol=1e-6, atol=1e-5)
  for ours, theirs in zip(gradients(image_layers.conv2d), gradients(autodiff_conv)):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def scanned_gradient_hlo(conv, stride) -> str:
  """Optimized HLO of two gradient steps of a conv in a lax.scan, as train.steps_per_call=2 runs them."""
  x = jnp.ones((2, 8, 8, 4))

  def step(w_KxKxCxO, _):
    return w_KxKxCxO - 0.1 * jax.grad(lambda w: jnp.sum(conv(x, w, stride) ** 2))(w_KxKxCxO), None

  kernel = 3 if stride == 1 else stride
  w = jnp.ones((kernel, kernel, 4, 8))
  return jax.jit(lambda w: jax.lax.scan(step, w, length=2)[0]).lower(w).compile().as_text()


def conv_layouts(hlo: str) -> list[str]:
  return re.findall(r"convolution\(.*?dim_labels=(\S+?)[,\s]", hlo)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the written-out gradient is the CPU's")
@pytest.mark.parametrize("stride", [1, 2])
def test_backward_convolutions_in_a_loop_are_canonical(stride):
  layouts = conv_layouts(scanned_gradient_hlo(image_layers.conv2d, stride))
  assert layouts and all(layout == CANONICAL for layout in layouts), layouts


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="documents XLA:CPU's behaviour")
def test_autodiffs_kernel_gradient_in_a_loop_is_not_canonical():
  # The check above can fail: autodiff's own gradient leaves a channels-as-batch convolution inside the loop.
  # If XLA:CPU ever canonicalizes it there, this fails, and conv2d's custom gradient can go.
  assert any(layout != CANONICAL for layout in conv_layouts(scanned_gradient_hlo(autodiff_conv, 1)))


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the written-out gradient is the CPU's")
@pytest.mark.parametrize("backbone", ["unet", "uvit"])
def test_image_backbones_scanned_train_steps_have_only_canonical_convolutions(backbone):
  # Catches a convolution added to a backbone that bypasses conv2d (K = 2 steps per call: the slow case).
  config = override(tiny_image_config.get_config(backbone), train__steps_per_call=2)
  modality = common.modality(config, 0)
  experiment, state, batch = common.random_train_setup(config, modality, sharding.make_mesh(config.mesh))
  layouts = conv_layouts(experiment.train_steps.lower(state, (batch, batch)).compile().as_text())
  assert layouts and set(layouts) == {CANONICAL}, sorted(set(layouts))
