"""Seconds to trace, lower and compile a config's train step (no arrays are allocated), as one JSON line.

  python benchmarks/compile_time.py --config configs/owt_medium.py [--config.model.transformer.num_layers=12 ...]

The step is lowered from abstract shapes (jax.ShapeDtypeStruct with the run's shardings), so a model too big
for this machine's memory still compiles here. Compile time that grows with model.transformer.num_layers means the
layers are unrolled in the program; with the layers scanned it stays flat.
"""

import json
import pathlib
import sys
import time

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
_VOCAB = flags.DEFINE_integer("vocab_size", 50_257, "Vocabulary size (text configs; GPT-2's by default).")
flags.mark_flag_as_required("config")


def main(_):
  config = _CONFIG.value
  mesh = sharding.make_mesh(config.mesh)
  modality = common.modality(config, _VOCAB.value)
  start = time.perf_counter()
  experiment = Experiment(config, modality, mesh)
  setup_seconds = time.perf_counter() - start
  batch = common.random_batch(modality, config.train.batch_size)
  abstract_batch = {key: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding.batch_sharding(mesh))
                    for key, value in batch.items()}
  start = time.perf_counter()
  lowered = experiment.train_step.lower(experiment.abstract_state, abstract_batch)
  lower_seconds = time.perf_counter() - start
  start = time.perf_counter()
  lowered.compile()
  compile_seconds = time.perf_counter() - start
  print(json.dumps({
      "benchmark": "compile_time", "config": config_flags.get_config_filename(flags.FLAGS["config"]),
      "backbone": config.model.backbone, "layers": config.model.transformer.num_layers,
      "width": config.model.transformer.width, "scan_layers": config.model.transformer.scan_layers,
      "remat": config.model.remat,
      "params": experiment.num_params(), "batch": config.train.batch_size, "seq_len": modality.length,
      "setup_seconds": round(setup_seconds, 2), "lower_seconds": round(lower_seconds, 2),
      "compile_seconds": round(compile_seconds, 2), "hlo_chars": len(lowered.as_text()),
      "jax": jax.__version__, "backend": jax.default_backend()}))


if __name__ == "__main__":
  app.run(main)
