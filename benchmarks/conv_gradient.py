"""Seconds per gradient step of one 3x3 'SAME' convolution, alone and inside a lax.scan (as train.steps_per_call
and train.grad_accum run it), with autodiff's gradient and with image_layers.conv2d's written-out one; one JSON
line per (shape, gradient).

  python benchmarks/conv_gradient.py [--repeats 5]

On XLA:CPU autodiff's kernel gradient stays in a slow layout inside loops; a ratio scan/alone near 1 for
conv2d and far above it for autodiff is what this measures.
"""

import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from md4_jax.run import allocator  # noqa: E402

allocator.use_huge_pages()  # before jax, as every entry point (md4_jax/run/allocator.py)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

from md4_jax.models import image_layers  # noqa: E402

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (after one untimed call).")
SHAPES = ((32, 8, 8, 128, 128), (16, 32, 32, 128, 256))  # batch, height, width, in channels, out channels


def seconds_per_call(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(_REPEATS.value):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) / _REPEATS.value


def main(_):
  for batch, height, width, channels, out_channels in SHAPES:
    x_BxHxWxC = jax.random.normal(jax.random.key(0), (batch, height, width, channels))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, channels, out_channels)) * 0.05
    for name, conv in (("autodiff", image_layers.conv2d_autodiff), ("conv2d", image_layers.conv2d)):
      def step(kernel_KxKxCxO, x_BxHxWxC, conv=conv):
        grad = jax.grad(lambda k, x: jnp.sum(jnp.tanh(conv(x, k, 1))), (0, 1))(kernel_KxKxCxO, x_BxHxWxC)
        return kernel_KxKxCxO - 1e-3 * grad[0] - 1e-3 * jnp.mean(grad[1])

      alone = seconds_per_call(jax.jit(step), kernel, x_BxHxWxC)
      xs = jnp.stack([x_BxHxWxC, x_BxHxWxC])
      scanned = jax.jit(lambda k, xs, step=step: jax.lax.scan(lambda k, x: (step(k, x), None), k, xs)[0])
      in_scan = seconds_per_call(scanned, kernel, xs) / 2
      print(json.dumps({"benchmark": "conv_gradient", "shape": [batch, height, width, channels, out_channels],
                        "gradient": name, "alone_seconds": round(alone, 4), "in_scan_seconds": round(in_scan, 4),
                        "scan_over_alone": round(in_scan / alone, 2)}), flush=True)


if __name__ == "__main__":
  app.run(main)
