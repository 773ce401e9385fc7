"""Peak memory of a config's train step, with and without remat, and the largest model that fits.

  python benchmarks/memory.py --config configs/quickstart.py [--config.a.b=v ...] [--largest --budget_gib 20]

Memory comes from XLA's buffer assignment of the compiled train step (arguments + outputs +
temporaries - donated aliases), so no step has to run: that is what makes models far too slow
to train on a CPU measurable. The largest model keeps the config's width, heads, sequence
and batch and adds layers until the step no longer fits `--budget_gib`. One JSON line.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from md4_jax.run import allocator  # noqa: E402

allocator.use_huge_pages()  # before jax: restarts once with a glibc tunable (md4_jax/run/allocator.py)

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks import common  # noqa: E402
from md4_jax.engine import sharding  # noqa: E402
from md4_jax.engine.experiment import Experiment  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_VOCAB = flags.DEFINE_integer("vocab_size", 27, "Vocabulary size.")
_BUDGET = flags.DEFINE_float("budget_gib", 20.0, "Memory the largest model may use (this machine: 24 GiB RAM).")
_LARGEST = flags.DEFINE_bool("largest", False, "Also search the largest layer count that fits the budget.")
flags.mark_flag_as_required("config")


def step_bytes(config, num_layers: int, remat: str) -> tuple[int, int]:
  """(peak bytes of one compiled train step, parameter count) for the config with these layers."""
  config = config.copy_and_resolve_references()
  config.model.transformer.num_layers, config.model.remat = num_layers, remat
  modality = common.modality(config, _VOCAB.value)
  experiment = Experiment(config, modality, sharding.make_mesh(config.mesh))
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(experiment.mesh)),
                       common.random_batch(modality, config.train.batch_size))
  memory = experiment.train_step.lower(experiment.abstract_state, batch).compile().memory_analysis()
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
          - memory.alias_size_in_bytes)
  return peak, experiment.num_params()


def largest_model(config, remat: str, budget: float) -> dict:
  """Peak memory is affine in the layer count: fit it on 1 and 2 layers, then confirm around the bound."""
  one, _ = step_bytes(config, 1, remat)
  two, _ = step_bytes(config, 2, remat)
  layers = max(1, int((budget - one) // (two - one)) + 1)
  while layers > 1 and step_bytes(config, layers, remat)[0] > budget:
    layers -= 1
  while step_bytes(config, layers + 1, remat)[0] <= budget:
    layers += 1
  peak, params = step_bytes(config, layers, remat)
  return {"layers": layers, "params": params, "peak_gib": round(peak / 2**30, 2)}


def main(_):
  config = _CONFIG.value
  budget = _BUDGET.value * 2**30
  result = {"benchmark": "memory", "config": config_flags.get_config_filename(flags.FLAGS["config"]),
            "vocab": _VOCAB.value, "width": config.model.transformer.width, "layers": config.model.transformer.num_layers,
            "batch": config.train.batch_size, "seq_len": config.data.seq_len, "budget_gib": _BUDGET.value}
  for remat in ("none", "block"):
    peak, params = step_bytes(config, config.model.transformer.num_layers, remat)
    result[f"step_peak_gib_remat_{remat}"] = round(peak / 2**30, 3)
    if _LARGEST.value:
      result[f"largest_remat_{remat}"] = largest_model(config, remat, budget)
  result["params"] = params
  result["peak_rss_gib_of_this_process"] = round(common.peak_rss_gib(), 3)
  result["jax"], result["backend"] = jax.__version__, jax.default_backend()
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
