"""Shared by the benchmark scripts: the modality to benchmark, random batches, the machine's matmul ceiling,
model FLOPs, peak memory."""

import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from md4_jax.data import modality as modalities
from md4_jax.data import sources
from md4_jax.engine import sharding
from md4_jax.engine.experiment import Experiment


def modality(config, vocab_size: int):
  """Image sources: their own shape (known without data); text: random tokens of `vocab_size` ids."""
  if sources.get(config.data.source).kind == "image":
    return sources.get(config.data.source).modality(config.data)
  return modalities.Text(vocab_size, config.data.seq_len)


def random_batch(modality, batch_size: int, seed: int = 0) -> dict:
  """Uniform random tokens (throughput does not depend on the data), with labels for labelled images."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, modality.vocab_size, (batch_size, modality.length), dtype=np.int32)
  batch = {"tokens": tokens, "token_mask": np.ones_like(tokens)}
  if modality.num_classes:
    batch["label"] = rng.integers(0, modality.num_classes, (batch_size,), dtype=np.int32)
  return batch


def random_train_setup(config, modality, mesh):
  """(experiment, its initial state, a random global batch of train.batch_size) for timing or compiling steps."""
  experiment = Experiment(config, modality, mesh)
  state = experiment.init_state(experiment.base_key)
  return experiment, state, sharding.global_batch(random_batch(modality, config.train.batch_size), mesh)


def matmul_ceiling_flops(size: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of a large float32 matmul in this process: the machine's practical ceiling."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    out = matmul(a)
  out.block_until_ready()
  return 2 * size**3 * repeats / (time.perf_counter() - start)


def compiled_flops(compiled) -> float:
  """FLOPs XLA counts in a compiled computation (convolutions and attention included)."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis.get("flops", 0.0))


def train_flops_per_token(model_config) -> float:
  """Transformer: 6 x (matmul params applied per token) + attention (12 x layers x width x length), fwd + bwd.

  The embedding (a gather) and the per-sequence adaLN/time parameters do no per-token matmul work.
  """
  d, f = model_config.width, model_config.hidden
  per_token_params = model_config.num_layers * (4 * d * d + 3 * d * f) + d * model_config.vocab_size
  attention = 12 * model_config.num_layers * d * model_config.seq_len
  return 6 * per_token_params + attention


def time_train_steps(experiment, state, batch, warmup: int, steps: int, steps_per_call: int = 1):
  """(state, seconds per step): `warmup` untimed calls (compilation included), then the mean over `steps` timed
  steps (rounded up to whole calls of `steps_per_call` steps, as train.steps_per_call runs them) on the same
  batch (the state is donated, so the returned one must be used)."""
  batches = (batch,) * steps_per_call
  for _ in range(warmup):
    state, _ = experiment.train_call(state, batches)
  jax.block_until_ready(state)
  calls = -(-steps // steps_per_call)
  start = time.perf_counter()
  for _ in range(calls):
    state, _ = experiment.train_call(state, batches)
  jax.block_until_ready(state)
  return state, (time.perf_counter() - start) / (calls * steps_per_call)


def train_step_model_flops(experiment, state, batch, units_per_step: int) -> tuple[float, str]:
  """(FLOPs of one train step, where the count comes from): the transformer's analytic count, image
  backbones' from XLA's cost analysis of the compiled step. That analysis counts a loop's body once, so a
  step with train.grad_accum > 1 (a scan over microbatches) is counted as the same step in one piece."""
  if experiment.config.model.backbone == "transformer":
    return train_flops_per_token(experiment.model_config) * units_per_step, "analytic"
  if experiment.config.train.grad_accum > 1:
    config = experiment.config.copy_and_resolve_references()
    config.train.grad_accum = 1
    experiment = type(experiment)(config, experiment.modality, experiment.mesh)
  return compiled_flops(experiment.train_step.lower(state, batch).compile()), "xla_cost_analysis"


def peak_rss_gib() -> float:
  """Peak resident memory of this process (host RAM; on CPU it holds the device buffers too)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
