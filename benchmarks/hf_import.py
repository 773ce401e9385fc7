"""Seconds and peak host memory of importing a Hugging Face checkpoint (model.init_from's loader).

  python benchmarks/hf_import.py --directory DIR [--make --hidden 1536 --layers 10]

--make first writes a random Llama of that shape (float32, with transformers and torch: the test extra) into DIR.
The import runs in a fresh process: the abstract model from the checkpoint's config.json, then every tensor read
and placed (hf_weights.load). On a CPU the placed parameters live in host memory too, so the number to hold
against the file is the peak resident memory the import adds (peak RSS minus the RSS before it): the params
themselves plus whatever the loader keeps on top. One JSON line: file bytes, seconds, added peak bytes, ratio.
"""

import json
import pathlib
import resource
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def make(directory: str, hidden: int, layers: int) -> None:
  import torch  # noqa: PLC0415 (the test extra)
  import transformers  # noqa: PLC0415

  config = transformers.LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64,
                                    num_hidden_layers=layers, num_attention_heads=hidden // 64,
                                    num_key_value_heads=hidden // 256, tie_word_embeddings=False)
  torch.manual_seed(0)
  with torch.device("cpu"):
    transformers.LlamaForCausalLM(config).float().save_pretrained(directory, max_shard_size="10GB")


def measure(directory: str) -> dict:
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from configs import base  # noqa: PLC0415
  from md4_jax import objectives  # noqa: PLC0415
  from md4_jax.data.modality import Text  # noqa: PLC0415
  from md4_jax.engine import sharding  # noqa: PLC0415
  from md4_jax.interop import hf_config, hf_weights  # noqa: PLC0415

  config = base.get_config()
  config.objective, config.model.init_from, config.data.seq_len = "ar", directory, 128
  hf_config.apply(config, base.get_config(), directory)
  vocab = hf_config.read(directory)["vocab_size"]
  model = objectives.build_model(config, Text(vocab, 128), objectives.chosen(config))
  abstract = nnx.state(nnx.eval_shape(lambda: model.make(nnx.Rngs(0))))
  mesh = sharding.make_mesh(config.mesh)
  target = jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract,
                        sharding.state_shardings(abstract, mesh))
  jax.block_until_ready(jax.device_put(jax.numpy.zeros(8)))  # the runtime's own start-up is not the loader's
  before = _rss_bytes()
  start = time.perf_counter()
  params = hf_weights.load(directory, target, scanned=False)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  file_bytes = sum(path.stat().st_size for path in pathlib.Path(directory).glob("*.safetensors"))
  param_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
  largest = max(leaf.nbytes for leaf in jax.tree.leaves(params))
  return {"file_bytes": file_bytes, "largest_tensor_bytes": largest, "param_bytes": param_bytes, "seconds": round(seconds, 2),
          "rss_before": before, "peak_rss": peak, "added_peak_bytes": peak - before,
          "added_peak_over_file": round((peak - before) / file_bytes, 3)}


def _rss_bytes() -> int:
  """The current resident set (the peak so far must not hide it: the import's own peak is what is measured)."""
  with open("/proc/self/statm") as stream:
    return int(stream.read().split()[1]) * resource.getpagesize()


def main():
  args = sys.argv[1:]
  directory = args[args.index("--directory") + 1]
  if "--make" in args:
    hidden = int(args[args.index("--hidden") + 1]) if "--hidden" in args else 1536
    layers = int(args[args.index("--layers") + 1]) if "--layers" in args else 10
    subprocess.run([sys.executable, __file__, "--directory", directory, "--make-only", str(hidden), str(layers)],
                   check=True)
  if "--make-only" in args:
    index = args.index("--make-only")
    make(directory, int(args[index + 1]), int(args[index + 2]))
    return
  print(json.dumps(measure(directory)))


if __name__ == "__main__":
  main()
