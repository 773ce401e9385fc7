"""Cost of the fused output layer + loss (md4_jax/core/fused_head.py), value and gradient, on the same rows:
cross-entropy's own pass, the generic pass (any token_loss) and the weighted pass that makes its gradient in the
forward pass (MD4's training path); one JSON line per dtype, ratios against the generic pass.

  python benchmarks/head_cost.py [--rows 4096] [--width 768] [--vocab 50257] [--repeats 5]

Per pass: the median seconds of `--repeats` calls (the two passes alternate, so a busy machine slows both), and
the bytes XLA's cost analysis counts for the compiled program (a loop's body is counted once: one block). On a
GPU the step's head is bound by memory traffic over [rows, vocabulary] float32 logits, so the bytes are the
figure to compare on a CPU, where the matmuls dominate the time.
"""

import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

from md4_jax.core import fused_head  # noqa: E402

_ROWS = flags.DEFINE_integer("rows", 4096, "Positions through the output layer.")
_WIDTH = flags.DEFINE_integer("width", 768, "Hidden width D.")
_VOCAB = flags.DEFINE_integer("vocab", 50257, "Vocabulary size V.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per pass.")


def generic_cross_entropy(logits_NxV, x0_N, values_NxK):
  """Cross-entropy as a new function, so head_loss takes its generic pass (it picks the lean one by identity)."""
  return fused_head.cross_entropy(logits_NxV, x0_N, values_NxK)


def measure(rows: int, width: int, vocab: int, dtype, repeats: int) -> dict:
  keys = jax.random.split(jax.random.key(0), 3)
  h_NxD = jax.random.normal(keys[0], (rows, width)).astype(dtype)
  kernel_DxV = 0.02 * jax.random.normal(keys[1], (width, vocab))
  x0_N = jax.random.randint(keys[2], (rows,), 0, vocab)
  weight_N = jnp.ones((rows,))
  losses = {"cross_entropy": lambda h, kernel: jnp.sum(fused_head.head_loss(h, kernel, x0_N) * weight_N),
            "generic": lambda h, kernel: jnp.sum(fused_head.head_loss(h, kernel, x0_N,
                                                                     token_loss=generic_cross_entropy) * weight_N),
            "weighted": lambda h, kernel: fused_head.weighted_nll(h, kernel, x0_N, weight_N)[0]}
  passes = {}
  for name, loss in losses.items():
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(h_NxD, kernel_DxV).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    jax.block_until_ready(compiled(h_NxD, kernel_DxV))
    passes[name] = {"compiled": compiled, "bytes": cost["bytes accessed"], "seconds": []}
  for _ in range(repeats):
    for result in passes.values():
      start = time.perf_counter()
      jax.block_until_ready(result["compiled"](h_NxD, kernel_DxV))
      result["seconds"].append(time.perf_counter() - start)
  seconds = {name: statistics.median(result["seconds"]) for name, result in passes.items()}
  return {"benchmark": "head_cost", "rows": rows, "width": width, "vocab": vocab, "dtype": jnp.dtype(dtype).name,
          "block_rows": fused_head.block_rows(rows, vocab), "backend": jax.default_backend(),
          **{f"{name}_seconds": round(value, 4) for name, value in seconds.items()},
          **{f"{name}_gb_per_block": round(result["bytes"] / 1e9, 3) for name, result in passes.items()},
          **{f"{name}_seconds_ratio": round(seconds[name] / seconds["generic"], 3) for name in ("cross_entropy",
                                                                                                "weighted")},
          **{f"{name}_bytes_ratio": round(passes[name]["bytes"] / passes["generic"]["bytes"], 3)
             for name in ("cross_entropy", "weighted")}}


def main(_):
  for dtype in (jnp.bfloat16, jnp.float32):
    print(json.dumps(measure(_ROWS.value, _WIDTH.value, _VOCAB.value, dtype, _REPEATS.value)), flush=True)


if __name__ == "__main__":
  app.run(main)
