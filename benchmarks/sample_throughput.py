"""Sampling speed of a config's model with several samplers, printed as one JSON line.

  python benchmarks/sample_throughput.py --config configs/quickstart.py --config.model.transformer.width=256 \
      --config.data.seq_len=256 --batch 16 --samplers ancestral:100,ancestral:1000,exact:1

Each sampler is an eval.samplers item: `name:steps` (ancestral, mean, confidence), `exact:k` (k tokens per call) or
`parallel:threshold`, optionally `:kv_cache` (e.g. `parallel:0.9:dual`, `ancestral:256:exact`). Block diffusion
with and without its cache: `--config configs/quickstart_bd3.py --config.sampler.kv_cache=exact` (or none). MD4
with Fast-dLLM's caches against the exact sampler:
  python benchmarks/sample_throughput.py --config configs/quickstart.py --config.model.transformer.width=256 \
      --config.data.seq_len=1024 --config.sampler.block_length=32 --batch 8 \
      --samplers exact:1,parallel:0.9:dual,parallel:0.9:prefix
Each sampler's speedup is against the first one listed. Freshly
initialised weights (speed does not depend on them); compilation is excluded. Reports seconds per batch,
network calls (NFE), seconds per call, and one bare network call's time against the matmul ceiling.
"""

import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from md4_jax.run import allocator  # noqa: E402

allocator.use_huge_pages()  # before jax: restarts once with a glibc tunable (md4_jax/run/allocator.py)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks import common  # noqa: E402
from md4_jax.engine import generate, sharding  # noqa: E402
from md4_jax.engine.experiment import Experiment  # noqa: E402
from md4_jax.evals import samples as sample_suite  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_BATCH = flags.DEFINE_integer("batch", 16, "Sequences per batch.")
_SAMPLERS = flags.DEFINE_list("samplers", ["ancestral:100", "ancestral:1000", "exact:1"],
                              "name:steps, or exact:tokens_per_call.")
_VOCAB = flags.DEFINE_integer("vocab_size", 27, "Vocabulary size.")
_CALL_REPEATS = flags.DEFINE_integer("call_repeats", 10, "Timed bare network calls.")
flags.mark_flag_as_required("config")


def main(_):
  config = _CONFIG.value
  mesh = sharding.make_mesh(config.mesh)
  modality = common.modality(config, _VOCAB.value)
  base_experiment = Experiment(config, modality, mesh)
  params = base_experiment.init_state(base_experiment.base_key)["ema_params"]
  length = modality.length
  all_masked = generate.unconditional_start(base_experiment, _BATCH.value)
  z_BxL = sharding.replicated_array(all_masked, mesh)
  t_B = sharding.replicated_array(np.full((_BATCH.value,), 0.5, np.float32), mesh)

  model_call = jax.jit(lambda p, z, t: nnx.merge(base_experiment.graphdef, p)(z, t))
  jax.block_until_ready(model_call(params, z_BxL, t_B))
  start = time.perf_counter()
  for _ in range(_CALL_REPEATS.value):
    out = model_call(params, z_BxL, t_B)
  jax.block_until_ready(out)
  call_seconds = (time.perf_counter() - start) / _CALL_REPEATS.value
  if config.model.backbone == "transformer":
    forward_flops = common.train_flops_per_token(base_experiment.model_config) / 3 * _BATCH.value * length
  else:
    forward_flops = common.compiled_flops(model_call.lower(params, z_BxL, t_B).compile())
  ceiling = common.matmul_ceiling_flops()

  results = []
  for spec, overrides in zip(_SAMPLERS.value, sample_suite.parse_variants(",".join(_SAMPLERS.value))):
    experiment = base_experiment.with_overrides("sampler", overrides)
    samples = generate.draw_samples(experiment, params, jax.random.key(0), all_masked)  # compile not timed
    results.append({"sampler": spec, "seconds_per_batch": round(samples.seconds, 3), "nfe": samples.nfe,
                    "seconds_per_call": round(samples.seconds / samples.nfe, 4),
                    "tokens_per_sec": round(samples.tokens_per_sec, 1)})
  for result in results:
    speedup = results[0]["seconds_per_batch"] / result["seconds_per_batch"]
    result[f"speedup_vs_{results[0]['sampler']}"] = round(speedup, 2)
  print(json.dumps({
      "benchmark": "sample_throughput", "config": config_flags.get_config_filename(flags.FLAGS["config"]),
      "objective": config.objective, "kv_cache": config.sampler.kv_cache, "backbone": config.model.backbone,
      "params": base_experiment.num_params(), "batch": _BATCH.value,
      "seq_len": length, "vocab": modality.vocab_size, "devices": len(jax.devices()),
      "network_call_seconds": round(call_seconds, 4),
      "network_call_gflops_per_sec": round(forward_flops / call_seconds / 1e9, 2),
      "matmul_ceiling_gflops_per_sec": round(ceiling / 1e9, 2),
      "network_call_fraction_of_ceiling": round(forward_flops / call_seconds / ceiling, 3),
      "samplers": results, "peak_rss_gib": round(common.peak_rss_gib(), 3),
      "jax": jax.__version__, "backend": jax.default_backend()}))


if __name__ == "__main__":
  app.run(main)
