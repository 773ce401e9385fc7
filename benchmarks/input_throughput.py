"""Tokens/s of the input pipeline alone (grain batches assembled into global arrays), one JSON line.

  python benchmarks/input_throughput.py --config configs/quickstart.py [--config.a.b=v ...]
  python benchmarks/input_throughput.py --config configs/owt_small.py --synthetic_documents 3000

With --synthetic_documents, the config's hub source is prepared first from generated documents
(the config's tokenizer and seq_len) in a temporary data.dir, so the array_record path is
measured without the real dataset.
"""

import gzip
import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from md4_jax.run import allocator  # noqa: E402

allocator.use_huge_pages()  # before jax: restarts once with a glibc tunable (md4_jax/run/allocator.py)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from md4_jax.data import pipeline  # noqa: E402
from md4_jax.engine import sharding  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")
_BATCHES = flags.DEFINE_integer("batches", 50, "Timed batches.")
_SYNTHETIC = flags.DEFINE_integer("synthetic_documents", 0, "Prepare a hub source from N generated documents.")
flags.mark_flag_as_required("config")


def synthetic_hub_data(config, num_documents: int, root: pathlib.Path) -> None:
  """Writes generated documents as a jsonl.gz shard and prepares the config's hub source from it."""
  rng = np.random.default_rng(0)
  words = ["the", "of", "model", "data", "diffusion", "token", "mask", "train", "a", "and", "is", "in"]
  shards = root / "shards"
  shards.mkdir(parents=True)
  with gzip.open(shards / "part-000.jsonl.gz", "wt") as file:
    for _ in range(num_documents):
      file.write(json.dumps({"text": " ".join(rng.choice(words, size=rng.integers(200, 800)))}) + "\n")
  config.data.dir, config.data.manual_dir = str(root / "data"), str(shards)
  pipeline.prepare(config.data)


def main(_):
  config = _CONFIG.value
  with tempfile.TemporaryDirectory() as tmp:
    if _SYNTHETIC.value:
      synthetic_hub_data(config, _SYNTHETIC.value, pathlib.Path(tmp))
    data = pipeline.load_data(config.data)
    mesh = sharding.make_mesh(config.mesh)
    iterator = iter(pipeline.train_dataset(data.train, config.train.batch_size, config.seed).to_iter_dataset())
    jax.block_until_ready(sharding.global_batch(next(iterator), mesh))  # warm-up
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
      batch = sharding.global_batch(next(iterator), mesh)
    jax.block_until_ready(batch)
    seconds = (time.perf_counter() - start) / _BATCHES.value
  tokens = config.train.batch_size * config.data.seq_len
  print(json.dumps({
      "benchmark": "input_throughput", "config": config_flags.get_config_filename(flags.FLAGS["config"]),
      "source": config.data.source, "batch": config.train.batch_size, "seq_len": config.data.seq_len,
      "train_rows": len(data.train), "batch_seconds": round(seconds, 5), "tokens_per_sec": round(tokens / seconds, 1)}))


if __name__ == "__main__":
  app.run(main)
