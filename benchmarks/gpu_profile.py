"""Where a train step's device time goes: a jax.profiler trace of a few owt_small steps, turned into a table of
the top kernels by time per step (JSON and Markdown), so a session without a GPU can work from it.

  python benchmarks/gpu_profile.py --out DIR [--config.a.b=v ...] [--steps 5] [--top 25] [--smoke]

Reads the Perfetto JSON trace jax.profiler writes (plain Python, no extra package). Kernel events are the
complete ('X') events on the device's tracks: a process named like "/device:GPU:0", its "Stream" threads (or
every thread but the XLA module/op summaries); on a CPU (--smoke) there is no device track, and XLA's own host
threads stand in, so the script's path can be tested here. Writes DIR/profile.json, DIR/profile.md and the
trace under DIR/trace/; one JSON line on stdout. Copy each GPU run's profile.md into benchmarks/profiles/.
"""

import gzip
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from md4_jax.run import allocator  # noqa: E402

allocator.use_huge_pages()  # before jax, as launch.py

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks import common  # noqa: E402
from md4_jax.engine import trace_table  # noqa: E402
from md4_jax.engine import sharding  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/owt_small.py", "Config file (default owt_small).")
_OUT = flags.DEFINE_string("out", "/tmp/gpu_profile", "Directory for the trace and the tables.")
_STEPS = flags.DEFINE_integer("steps", 5, "Train steps inside the trace (after 2 untraced warm-up steps).")
_TOP = flags.DEFINE_integer("top", 25, "Kernels in the table.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "model.dtype for the profile.")
_BATCH = flags.DEFINE_integer("batch", 64, "Global batch.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shapes: the script's path on a CPU (numbers mean nothing).")
GPT2_VOCAB = 50_257
def main(_):
  config = _CONFIG.value
  config.model.dtype, config.train.batch_size = _DTYPE.value, _BATCH.value
  if _SMOKE.value:
    config.data.seq_len, config.model.transformer.width, config.model.transformer.num_layers, config.model.transformer.num_heads = 32, 32, 2, 2
    config.model.transformer.mlp_hidden, config.model.transformer.cond_dim, config.train.batch_size = 64, 8, 4
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh)
  modality = common.modality(config, GPT2_VOCAB)
  experiment, state, batch = common.random_train_setup(config, modality, mesh)
  state, _ = common.time_train_steps(experiment, state, batch, 2, 1)  # compile and warm up, untraced
  with jax.profiler.trace(str(out / "trace"), create_perfetto_trace=True):
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      state, metrics = experiment.train_step(state, batch)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - start) / _STEPS.value
  trace_file = max((out / "trace").rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
  trace = json.load(gzip.open(trace_file))
  table = trace_table.kernel_table(trace_table.kernel_events(trace), _STEPS.value, _TOP.value)
  device = jax.devices()[0].device_kind
  title = (f"{config_flags.get_config_filename(flags.FLAGS['config'])}, {config.model.dtype}, batch "
           f"{config.train.batch_size} x {modality.length}, logits_capacity {config.train.logits_capacity}, "
           f"scan_layers {config.model.transformer.scan_layers} (unroll {config.model.transformer.scan_unroll}), {device}, "
           f"jax {jax.__version__}, {time.strftime('%Y-%m-%d')}")
  record = {"benchmark": "gpu_profile", "title": title, "step_seconds_traced": round(seconds, 4), **table,
            "tracks": trace_table.tracks(trace)}
  (out / "profile.json").write_text(json.dumps(record, indent=1))
  (out / "profile.md").write_text(trace_table.markdown(table, title) + f"\nWall time per traced step: {seconds * 1e3:.1f} ms.\n")
  print(json.dumps({k: v for k, v in record.items() if k not in ("kernels", "tracks")} | {"top3": table["kernels"][:3]}),
        flush=True)


if __name__ == "__main__":
  app.run(main)
