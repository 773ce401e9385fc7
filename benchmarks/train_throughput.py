"""Train-step throughput of a config, printed as one JSON line.

  python benchmarks/train_throughput.py --config configs/quickstart.py [--config.a.b=v ...] [--steps 20]

Random tokens (throughput does not depend on the data); timed after warm-up steps that include compilation.
"""

import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks import common  # noqa: E402
from md4_jax import sharding  # noqa: E402
from md4_jax.train import Experiment  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (compilation included).")
_VOCAB = flags.DEFINE_integer("vocab_size", 27, "Vocabulary size of the random tokens.")
flags.mark_flag_as_required("config")


def main(_):
  config = _CONFIG.value
  mesh = sharding.make_mesh(config.mesh)
  experiment = Experiment(config, _VOCAB.value, mesh)
  state = experiment.init_state(experiment.base_key)
  shape = (config.train.batch_size, config.data.seq_len)
  tokens = np.random.default_rng(0).integers(0, _VOCAB.value, shape, dtype=np.int32)
  batch = sharding.global_batch({"tokens": tokens, "token_mask": np.ones_like(tokens)}, mesh)
  for _ in range(_WARMUP.value):
    state, metrics = experiment.train_step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = experiment.train_step(state, batch)
  jax.block_until_ready(metrics)
  step_seconds = (time.perf_counter() - start) / _STEPS.value
  tokens_per_step = shape[0] * shape[1]
  model_flops = common.train_flops_per_token(experiment.model_config) * tokens_per_step / step_seconds
  ceiling = common.matmul_ceiling_flops()
  print(json.dumps({
      "benchmark": "train_throughput", "config": config_flags.get_config_filename(flags.FLAGS["config"]),
      "params": experiment.num_params(), "batch": shape[0], "seq_len": shape[1], "vocab": _VOCAB.value,
      "width": config.model.width, "layers": config.model.num_layers, "devices": len(jax.devices()),
      "step_seconds": round(step_seconds, 4), "tokens_per_sec": round(tokens_per_step / step_seconds, 1),
      "model_gflops_per_sec": round(model_flops / 1e9, 2), "matmul_ceiling_gflops_per_sec": round(ceiling / 1e9, 2),
      "fraction_of_ceiling": round(model_flops / ceiling, 3), "peak_rss_gib": round(common.peak_rss_gib(), 3),
      "jax": jax.__version__, "backend": jax.default_backend()}))


if __name__ == "__main__":
  app.run(main)
