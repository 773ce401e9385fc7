"""Drawing samples from an Experiment and writing them where the workdir contract says (samples/).

Files per batch of samples: the modality's own (text: stem.txt; images: stem.png, a grid, and
stem_process.png, the reverse process) and stem.jsonl, one object per sample with its text or
tokens, its class label (class-conditional runs), the sampler settings, network calls, seconds and tokens/s
(Samples.tokens_per_sec).
"""

import dataclasses
import json
import time

import jax
import numpy as np
from etils import epath

from md4_jax.engine import sharding
from md4_jax.storage import files


@dataclasses.dataclass(frozen=True)
class Samples:
  tokens: np.ndarray  # [N, L]
  order: np.ndarray  # [N, L]: the sampler's clock at which each token was filled (0 = given)
  labels: np.ndarray  # [N] class labels the samples were drawn for (meaningful for class-conditional runs)
  nfe: int  # network calls
  seconds: float  # the sampling call, without compilation
  paths: tuple = ()  # files written

  @property
  def tokens_per_sec(self) -> float:
    """All of the batch's tokens (given ones included) over the sampling call's seconds."""
    return self.tokens.size / max(self.seconds, 1e-9)


def unconditional_start(experiment, num_samples: int) -> np.ndarray:
  """[num_samples, D] of mask ids: generate everything."""
  return np.full((num_samples, experiment.modality.length), experiment.vocab_size, np.int32)


def sample_labels(experiment, num_samples: int, class_labels=None) -> np.ndarray:
  """[num_samples] int32: the given labels repeated, or (class-conditional runs) 0, 1, 2, ... in turn;
  zeros for unconditional runs (their networks do not read labels)."""
  num_classes = experiment.num_classes
  if class_labels:
    return np.resize(np.asarray(class_labels, np.int32), num_samples)
  return (np.arange(num_samples) % num_classes if num_classes else np.zeros(num_samples)).astype(np.int32)


def draw_samples(experiment, params, key, start_NxL: np.ndarray, labels_N: np.ndarray | None = None) -> Samples:
  """start_NxL's mask ids filled by the configured sampler (labels: see `sample_labels`)."""
  if labels_N is None:
    labels_N = sample_labels(experiment, len(start_NxL))
  start = sharding.replicated_array(np.asarray(start_NxL, np.int32), experiment.mesh)
  labels = sharding.replicated_array(np.asarray(labels_N, np.int32), experiment.mesh)
  experiment.sample.lower(params, key, start, labels).compile()  # compiled apart from the timed call (jit reuses it)
  start_time = time.perf_counter()
  tokens, nfe, order = jax.device_get(experiment.sample(params, key, start, labels))
  return Samples(np.asarray(tokens), np.asarray(order), np.asarray(labels_N), int(nfe),
                 time.perf_counter() - start_time)


def write_samples(experiment, params, stem: epath.Path, key, start_NxL: np.ndarray, record: dict,
                  labels_N: np.ndarray | None = None) -> Samples:
  """Draws and writes one batch of samples (process 0 writes); `record` goes into every .jsonl line."""
  samples = draw_samples(experiment, params, key, start_NxL, labels_N)
  paths = ()
  if jax.process_index() == 0:
    modality = experiment.modality
    stem.parent.mkdir(parents=True, exist_ok=True)
    settings = dataclasses.asdict(experiment.sampler_settings)
    label = (lambda i: {"label": int(samples.labels[i])}) if experiment.num_classes else (lambda i: {})  # noqa: E731
    jsonl = stem.with_name(stem.name + ".jsonl")
    files.write_text_atomically(jsonl, "".join(
        json.dumps({"index": i, **modality.describe(row), **label(i), **record, "sampler": settings,
                    "nfe": samples.nfe, "seconds": round(samples.seconds, 3),
                    "tokens_per_sec": round(samples.tokens_per_sec, 1)}) + "\n"
        for i, row in enumerate(samples.tokens)))
    paths = (*modality.write_samples(stem, samples.tokens, samples.order), jsonl)
  return dataclasses.replace(samples, paths=paths)
