"""The GPU measurements in one process, one JSON line each (stdout, flushed as they come).

  python benchmarks/gpu_suite.py [--budget_seconds 270] [--smoke]

Run through benchmarks/gpu_suite.sh on a lent GPU. Measures, in this order, while the time budget lasts:
  1. owt_small's train step in bfloat16 at its real shape (12 layers, width 768, GPT-2 vocabulary, 1,024
     tokens; batch 64): as configured (masked-position output layer, a rolled loop over the stacked layers)
     and with the output layer at every position, each also with model.transformer.scan_unroll=0 (the same parameters as
     straight-line code: no per-layer activation stacks to fill and copy back out); tokens/s and MFU;
  2. the same four in float32 at batch 32 (the reference code's dtype, at the batch benchmarks/RESULTS.md
     compares it at);
  3. bfloat16 with remat, with the XLA attention kernel, and the largest batch (powers of two from 128) that
     fits without remat;
  4. `exact` and `ancestral` sampling at owt_small's shape: tokens generated per second; then the caches of
     issue 30: MD4 `parallel:0.9:dual` (blocks of 32) and block diffusion (blocks of 4, 4 ancestral steps each)
     with and without its exact cache;
  5. the image configs' train steps (digits, cifar10, imagenet64) in bfloat16, and the largest batch with remat.
MFU = model FLOPs per second / the GPU's published dense bfloat16 peak (PEAK_BF16_TFLOPS; --peak_tflops for
others). Model FLOPs: the transformer's analytic count (benchmarks/common.train_flops_per_token: every position
through the output layer, whatever the run computes), images' from XLA's cost analysis. --smoke shrinks every
shape so the script's paths can run on a CPU (tests/test_gpu_suite.py).
"""

import functools
import gc
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from md4_jax.run import allocator  # noqa: E402

allocator.use_huge_pages()  # before jax, as launch.py (gpu_suite.sh reruns one step without: MD4_JAX_MALLOC=default)

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import common  # noqa: E402
from configs import cifar10, digits, imagenet64, owt_small  # noqa: E402
from md4_jax.engine import generate, sharding  # noqa: E402
from md4_jax.engine.experiment import Experiment  # noqa: E402
from md4_jax.evals import samples as sample_suite  # noqa: E402

_BUDGET = flags.DEFINE_float("budget_seconds", 270.0, "Skip the remaining measurements after this long.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Dense bfloat16 peak of this device (0: from PEAK_BF16_TFLOPS).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shapes (a check of the script on a CPU; numbers mean nothing).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps per measurement.")
_ONLY = flags.DEFINE_list("only", [], "Run only these measurements (names as in the output; default all).")

# Published dense (not sparse) bfloat16 tensor-core peaks, TFLOP/s, by jax's device_kind prefix (NVIDIA data
# sheets: H100/H200 SXM 989.4, H100 PCIe 756, A100 312).
PEAK_BF16_TFLOPS = {"NVIDIA H200": 989.4, "NVIDIA H100 PCIe": 756.0, "NVIDIA H100": 989.4, "NVIDIA A100": 312.0}
GPT2_VOCAB = 50_257
BD3 = {"objective": "bd3", "diffusion__bd3__block_size": 4}  # configs/bd3_owt_small.py's blocks, on text_config
START = time.perf_counter()


def emit(record: dict) -> None:
  print(json.dumps({"benchmark": "gpu_suite", **record}), flush=True)


def peak_flops() -> float | None:
  if _PEAK.value:
    return _PEAK.value * 1e12
  kind = jax.devices()[0].device_kind
  return next((tflops * 1e12 for prefix, tflops in PEAK_BF16_TFLOPS.items() if kind.startswith(prefix)), None)


def text_config(batch: int, dtype: str = "bfloat16", **model):
  config = owt_small.get_config()
  config.model.dtype = dtype
  config.train.batch_size = batch
  if _SMOKE.value:
    config.data.seq_len = 32
    config.model.transformer.update(width=32, num_layers=2, num_heads=2, mlp_hidden=64, cond_dim=8)
  for key, value in model.items():  # "group__key" or "group__part__key"
    *groups, name = key.split("__")
    target = config
    for group in groups:
      target = target[group]
    target[name] = value
  return config


def image_config(module, batch: int):
  config = module.get_config()
  config.model.dtype, config.train.batch_size = "bfloat16", batch
  if _SMOKE.value:
    config.model.unet.channels, config.model.unet.num_res_blocks = 8, 1
    config.model.uvit.channels, config.model.uvit.num_res_blocks, config.model.uvit.width = 8, 1, 32
    config.model.uvit.num_layers, config.model.uvit.num_heads = 1, 2
  return config


def out_of_memory(error: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def time_train_step(name: str, config, vocab_size: int = GPT2_VOCAB) -> dict:
  """One measurement: compile, 2 warm-up steps, `--steps` timed steps of random data."""
  mesh = sharding.make_mesh(config.mesh)
  modality = common.modality(config, vocab_size)
  record = {"measurement": name, "batch": config.train.batch_size, "length": modality.length,
            "dtype": config.model.dtype, "remat": config.model.remat, "logits_capacity": config.train.logits_capacity,
            "scan_unroll": config.model.transformer.scan_unroll if config.model.transformer.scan_layers else None,
            "huge_pages": allocator.in_effect()}
  try:
    experiment, state, batch = common.random_train_setup(config, modality, mesh)
    start = time.perf_counter()
    compiled = experiment.train_step.lower(state, batch).compile()
    record["compile_seconds"] = round(time.perf_counter() - start, 2)
    state, seconds = common.time_train_steps(experiment, state, batch, 2, _STEPS.value)
  except Exception as error:  # noqa: BLE001 (an out-of-memory batch is a result, not a failure)
    if not out_of_memory(error):
      raise
    return {**record, "fits": False}
  units = config.train.batch_size * modality.length
  flops, _ = common.train_step_model_flops(experiment, state, batch, units)
  peak = peak_flops()
  memory = jax.devices()[0].memory_stats() or {}
  record.update({"fits": True, "params": experiment.num_params(), "step_seconds": round(seconds, 4),
                 f"{modality.unit}s_per_sec": round(units / seconds, 1),
                 "model_tflops_per_sec": round(flops / seconds / 1e12, 2),
                 "mfu": round(flops / seconds / peak, 3) if peak else None,
                 "peak_gib": round(memory.get("peak_bytes_in_use", 0) / 2**30, 2)})
  del state, batch, compiled, experiment
  gc.collect()
  jax.clear_caches()
  return record


def sampling(name: str, spec: str, batch: int, **config_changes) -> dict:
  """Tokens/s of one eval.samplers item at owt_small's shape (config_changes as text_config's: group__key)."""
  config = text_config(batch, **config_changes)
  mesh = sharding.make_mesh(config.mesh)
  experiment = Experiment(config, common.modality(config, GPT2_VOCAB), mesh)
  experiment = experiment.with_overrides("sampler", sample_suite.parse_variants(spec)[0])
  params = experiment.init_state(experiment.base_key)["ema_params"]
  start_NxL = generate.unconditional_start(experiment, batch)
  generate.draw_samples(experiment, params, jax.random.key(0), start_NxL)  # compiles
  samples = generate.draw_samples(experiment, params, jax.random.key(1), start_NxL)
  return {"measurement": name, "objective": config.objective, "sampler": spec, "batch": batch,
          "length": config.data.seq_len, "nfe": samples.nfe,
          "seconds": round(samples.seconds, 3), "tokens_per_sec": round(samples.tokens_per_sec, 1)}


def largest_batch(remat: str) -> dict:
  best, batch = None, 128 if not _SMOKE.value else 8
  while time.perf_counter() - START < _BUDGET.value and batch <= (4096 if not _SMOKE.value else 16):
    result = time_train_step(f"largest_batch_remat_{remat}", text_config(batch, model__remat=remat))
    if not result["fits"]:
      break
    best, batch = result, batch * 2
  return best or {"measurement": f"largest_batch_remat_{remat}", "fits": False, "tried_from": 128}


def main(_):
  device = jax.devices()[0]
  emit({"measurement": "device", "device_kind": device.device_kind, "backend": jax.default_backend(),
        "jax": jax.__version__, "published_bf16_peak_tflops": (peak_flops() or 0) / 1e12 or None})
  batch = 8 if _SMOKE.value else 64
  samples = 2 if _SMOKE.value else 16
  every_position, unrolled = {"train__logits_capacity": 1.0}, {"model__transformer__scan_unroll": 0}

  def step(name, rows, dtype="bfloat16", **changes):
    return name, lambda: time_train_step(name, text_config(rows, dtype, **changes))

  plan = [  # bfloat16 at batch 64; float32 at the reference code's batch, 32
      step("owt_small_train", batch),
      step("owt_small_train_every_position", batch, **every_position),
      step("owt_small_train_unrolled", batch, **unrolled),
      step("owt_small_train_every_position_unrolled", batch, **every_position, **unrolled),
      step("owt_small_train_float32", batch // 2, "float32"),
      step("owt_small_train_float32_unrolled", batch // 2, "float32", **unrolled),
      step("owt_small_train_float32_every_position", batch // 2, "float32", **every_position),
      step("owt_small_train_float32_every_position_unrolled", batch // 2, "float32", **every_position, **unrolled),
      step("owt_small_train_remat", batch, model__remat="block"),
      ("largest_batch_remat_none", lambda: largest_batch("none")),
      step("owt_small_train_xla_attention", batch, model__attention="xla"),
      ("owt_small_sample", lambda: sampling("owt_small_sample", "exact:1", samples)),
      ("owt_small_sample", lambda: sampling("owt_small_sample", "ancestral:4" if _SMOKE.value else "ancestral:1000",
                                            samples)),
      *(("cached_sample", functools.partial(sampling, "cached_sample", spec, samples, **changes)) for spec, changes in (
          ("parallel:0.9:dual", {"sampler__block_length": 8 if _SMOKE.value else 32}),
          *((f"ancestral:{8 if _SMOKE.value else 1024}:{cache}", BD3) for cache in ("exact", "none")))),
      ("digits_train", lambda: time_train_step("digits_train", image_config(digits, 256), 17)),
      ("cifar10_train", lambda: time_train_step(
          "cifar10_train", image_config(cifar10, 8 if _SMOKE.value else 128), 256)),
      ("imagenet64_train", lambda: time_train_step(
          "imagenet64_train", image_config(imagenet64, 2 if _SMOKE.value else 64), 256)),
      ("largest_batch_remat_block", lambda: largest_batch("block")),
  ]
  plan = [measure for name, measure in plan if not _ONLY.value or name in _ONLY.value]
  for index, measure in enumerate(plan):
    if time.perf_counter() - START > _BUDGET.value:
      emit({"measurement": "skipped", "remaining": len(plan) - index, "budget_seconds": _BUDGET.value})
      break
    emit({**measure(), "elapsed_seconds": round(time.perf_counter() - START, 1)})


if __name__ == "__main__":
  app.run(main)
