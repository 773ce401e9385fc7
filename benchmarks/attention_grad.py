"""The attention core's forward + backward: autodiff of the forward against the hand-written backward pass
(models/layers.py), interleaved in one process, as one JSON line.

  python benchmarks/attention_grad.py [--shape 16,256,4,64] [--dtype float32] [--repeats 10] [--rounds 3]
"""

import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from md4_jax.run import allocator  # noqa: E402

allocator.use_huge_pages()  # before jax: restarts once with a glibc tunable (md4_jax/run/allocator.py)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

from md4_jax.models.attention import _attention_forward, attention  # noqa: E402

_SHAPE = flags.DEFINE_list("shape", ["16", "256", "4", "64"], "batch, length, heads, head size.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "q, k, v dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per round (the median is kept).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds of each form.")


def main(_):
  shape = tuple(int(x) for x in _SHAPE.value)
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(key, shape).astype(_DTYPE.value) for key in keys[:3])
  cotangent = jax.random.normal(keys[3], shape)
  forms = {"autodiff": lambda q, k, v: _attention_forward(q, k, v, False)[0], "written": attention}
  grads = {name: jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v).astype(jnp.float32) * cotangent),
                                  argnums=(0, 1, 2))) for name, f in forms.items()}
  medians = {name: [] for name in grads}
  for _ in range(_ROUNDS.value):
    for name, grad in grads.items():
      jax.block_until_ready(grad(q, k, v))
      times = []
      for _ in range(_REPEATS.value):
        start = time.perf_counter()
        jax.block_until_ready(grad(q, k, v))
        times.append(time.perf_counter() - start)
      medians[name].append(round(sorted(times)[len(times) // 2] * 1e3, 2))
  print(json.dumps({"benchmark": "attention_grad", "shape": shape, "dtype": _DTYPE.value, "ms": medians,
                    "written_over_autodiff": round(min(medians["written"]) / min(medians["autodiff"]), 3),
                    "jax": jax.__version__, "backend": jax.default_backend()}))


if __name__ == "__main__":
  app.run(main)
