"""Train-step throughput of a config, printed as one JSON line.

  python benchmarks/train_throughput.py --config configs/quickstart.py [--config.a.b=v ...] [--steps 20]

Random tokens (throughput does not depend on the data); timed after warm-up steps that include compilation,
train.steps_per_call steps per jitted call as the training loop runs them.
The steps are timed in rounds, each followed by a measurement of the machine's matmul ceiling: on a shared
machine both swing by 10-20% within minutes, so the fastest round and the highest ceiling are reported (the
machine's uncontended figures), beside the median of the rounds' own ratios.
Model FLOPs: the transformer's analytic count (6 x matmul parameters per token + attention); image
backbones' from XLA's cost analysis of the compiled step (convolutions, attention). Throughput is in
tokens/s for text and dims/s (sub-pixels) for images.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from md4_jax.run import allocator  # noqa: E402

allocator.use_huge_pages()  # before jax: restarts once with a glibc tunable (md4_jax/run/allocator.py)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks import common  # noqa: E402
from md4_jax.engine import sharding  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds of timed steps, each followed by a matmul-ceiling measurement.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed calls first (compilation included).")
_VOCAB = flags.DEFINE_integer("vocab_size", 27, "Vocabulary size of the random tokens.")
flags.mark_flag_as_required("config")


def main(_):
  config = _CONFIG.value
  mesh = sharding.make_mesh(config.mesh)
  modality = common.modality(config, _VOCAB.value)
  experiment, state, batch = common.random_train_setup(config, modality, mesh)
  round_seconds, round_ceilings = [], []
  for round_index in range(_ROUNDS.value):
    warmup = _WARMUP.value if round_index == 0 else 0
    state, seconds = common.time_train_steps(experiment, state, batch, warmup, _STEPS.value,
                                             config.train.steps_per_call)
    round_seconds.append(seconds)
    round_ceilings.append(common.matmul_ceiling_flops())
  tokens_per_step = config.train.batch_size * modality.length
  step_flops, flops_source = common.train_step_model_flops(experiment, state, batch, tokens_per_step)
  step_seconds, ceiling = min(round_seconds), max(round_ceilings)
  model_flops = step_flops / step_seconds
  round_fractions = [step_flops / seconds / c for seconds, c in zip(round_seconds, round_ceilings)]
  print(json.dumps({
      "benchmark": "train_throughput", "config": config_flags.get_config_filename(flags.FLAGS["config"]),
      "backbone": config.model.backbone, "params": experiment.num_params(), "batch": config.train.batch_size,
      "seq_len": modality.length, "vocab": modality.vocab_size, "width": config.model.transformer.width,
      "layers": config.model.transformer.num_layers, "heads": config.model.transformer.num_heads, "dtype": config.model.dtype,
      "devices": len(jax.devices()), "steps_per_call": config.train.steps_per_call,
      "step_seconds": round(step_seconds, 4),
      f"{modality.unit}s_per_sec": round(tokens_per_step / step_seconds, 1),
      "model_gflops_per_step": round(step_flops / 1e9, 2), "flops_from": flops_source,
      "model_gflops_per_sec": round(model_flops / 1e9, 2), "matmul_ceiling_gflops_per_sec": round(ceiling / 1e9, 2),
      "fraction_of_ceiling": round(model_flops / ceiling, 3),
      "fraction_of_ceiling_median_round": round(float(np.median(round_fractions)), 3),
      "step_seconds_rounds": [round(x, 4) for x in round_seconds],
      "ceiling_gflops_rounds": [round(x / 1e9, 1) for x in round_ceilings],
      "peak_rss_gib": round(common.peak_rss_gib(), 3),
      "jax": jax.__version__, "backend": jax.default_backend()}))


if __name__ == "__main__":
  app.run(main)
