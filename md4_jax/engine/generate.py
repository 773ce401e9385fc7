"""Drawing samples from an Experiment (`draw_samples`: one batch in memory, for evaluations and benchmarks) and
writing them where the workdir contract says (`write_samples`: samples/, any number, batch by batch).

Files (engine/sample_files.py): the modality's own (text: stem.txt; images: stem.png, a grid, and
stem_process.png, the reverse process) and stem.jsonl, one object per sample with its text or tokens, its
class label (class-conditional runs), the sampler settings, and its batch's network calls, seconds and tokens/s.
"""

import dataclasses
import functools
import time

import jax
import numpy as np
import tqdm
from etils import epath

from md4_jax.engine import sample_files, sharding


@dataclasses.dataclass(frozen=True)
class Samples:
  tokens: np.ndarray  # [N, L]
  order: np.ndarray  # [N, L]: the sampler's clock at which each token was filled (0 = given)
  labels: np.ndarray  # [N] class labels the samples were drawn for (meaningful for class-conditional runs)
  nfe: int  # network calls
  seconds: float  # the sampling call, without compilation

  @property
  def tokens_per_sec(self) -> float:
    """All of the batch's tokens (given ones included) over the sampling call's seconds."""
    return self.tokens.size / max(self.seconds, 1e-9)


def unconditional_start(experiment, num_samples: int) -> np.ndarray:
  """[num_samples, D] of mask ids: generate everything."""
  return np.full((num_samples, experiment.modality.length), experiment.vocab_size, np.int32)


def sample_labels(experiment, num_samples: int, class_labels=None, first: int = 0) -> np.ndarray:
  """[num_samples] int32, for samples first, first + 1, ...: the given labels in turn, or (class-conditional
  runs) 0, 1, 2, ...; zeros for unconditional runs (their networks do not read labels)."""
  index = np.arange(first, first + num_samples)
  if class_labels is not None and len(class_labels):
    return np.asarray(class_labels, np.int32)[index % len(class_labels)]
  num_classes = experiment.num_classes
  return (index % num_classes if num_classes else np.zeros(num_samples)).astype(np.int32)


def draw_samples(experiment, params, key, start_NxL: np.ndarray, labels_N: np.ndarray | None = None,
                 compile_first: bool = True) -> Samples:
  """start_NxL's mask ids filled by the configured sampler (labels: see `sample_labels`). compile_first: compile
  before the timed call (jit reuses it), so `seconds` is the sampling alone."""
  if labels_N is None:
    labels_N = sample_labels(experiment, len(start_NxL))
  start = sharding.replicated_array(np.asarray(start_NxL, np.int32), experiment.mesh)
  labels = sharding.replicated_array(np.asarray(labels_N, np.int32), experiment.mesh)
  if compile_first:
    experiment.sample.lower(params, key, start, labels).compile()
  start_time = time.perf_counter()
  tokens, nfe, order = jax.device_get(experiment.sample(params, key, start, labels))
  return Samples(np.asarray(tokens), np.asarray(order), np.asarray(labels_N), int(nfe),
                 time.perf_counter() - start_time)


def tiled_start(known_K: np.ndarray, mask_id: int):
  """start_of for samples that all begin with the same known tokens (a prompt or an infill template; none: all
  masked) and are masked after them."""
  known_K = np.asarray(known_K, np.int32)

  def start_of(first: int, rows: int, begin: int, end: int) -> np.ndarray:
    del first
    segment = np.full(end - begin, mask_id, np.int32)
    given = known_K[begin:end]
    segment[:len(given)] = given
    return np.tile(segment, (rows, 1))

  return start_of


def rows_start(start_NxL: np.ndarray, mask_id: int):
  """start_of for given start rows (completions of held-out images); rows past them are all masked."""
  def start_of(first: int, rows: int, begin: int, end: int) -> np.ndarray:
    part = np.asarray(start_NxL[first:first + rows, begin:end], np.int32)
    return np.concatenate([part, np.full((rows - len(part), end - begin), mask_id, np.int32)])

  return start_of


KEEP_TOKENS = 1 << 20  # a first batch's samples up to this long stay in memory for the caller (longer: the files)


@dataclasses.dataclass(frozen=True)
class Written:
  """What write_samples drew and wrote; the first batch's tokens and texts stay for the caller to show."""
  paths: tuple
  count: int
  nfe: int  # network calls, all batches
  seconds: float  # sampling calls, without compilation
  length: int
  first_tokens: np.ndarray | None  # [rows of the first batch, length]; None for samples over KEEP_TOKENS
  previews: list  # the first batch's texts (cut at sample_files.PREVIEW_CHARS)

  @property
  def tokens_per_sec(self) -> float:
    return self.count * self.length / max(self.seconds, 1e-9)


def write_samples(experiment, params, stem: epath.Path, key, record: dict, *, count: int, start_of, length: int,
                  class_labels=None, stops=(), keep: int = 0) -> Written:
  """Draws `count` samples of `length` tokens, sampler.batch_size at a time, and writes them as they come
  (engine/sample_files.py; process 0 writes), so memory holds one batch whatever the count. start_of(first,
  rows, begin, end) gives the start tokens (mask ids where the sampler generates) of samples first.. at positions
  begin..end. Batch b draws with fold_in(key, b) (b = 0: key itself), so the first batch is what a smaller
  --num_samples draws. A length past data.seq_len (BD3's exact cache) is drawn data.seq_len tokens at a time.
  `record` goes into every .jsonl line. A text sample ends at end-of-text or the first of `stops`, after its
  first `keep` tokens (engine/sample_ends.py)."""
  batch = min(count, experiment.config.sampler.batch_size)
  segment = min(length, experiment.modality.length)
  writer = None
  if jax.process_index() == 0:
    writer = sample_files.SampleFiles(stem, experiment.modality, record,
                                      dataclasses.asdict(experiment.sampler_settings), experiment.num_classes > 0,
                                      stops=stops, keep=keep)
  try:
    nfe, seconds, first_tokens = 0, 0.0, None
    for index, first in enumerate(range(0, count, batch)):
      rows = min(batch, count - first)
      labels_B = sample_labels(experiment, batch, class_labels, first)
      batch_key = key if index == 0 else jax.random.fold_in(key, index)
      if writer:
        writer.begin(first, labels_B[:rows], in_segments=length != segment)
      drawn = _draw_batch(experiment, params, batch_key, labels_B, functools.partial(start_of, first, batch),
                          length, segment, writer, rows, compile_first=index == 0)
      nfe, seconds = nfe + drawn[0], seconds + drawn[1]
      if index == 0 and length <= KEEP_TOKENS:
        first_tokens = drawn[2][:rows]
      if writer:
        writer.end(drawn[0], drawn[1])
    paths = writer.close() if writer else ()
  except BaseException:
    if writer:
      writer.discard()
    raise
  return Written(paths, count, nfe, seconds, length, first_tokens, writer.previews if writer else [])


def _draw_batch(experiment, params, key, labels_B, start_of, length: int, segment: int, writer, rows: int,
                compile_first: bool):
  """One batch, whole or in segments: (network calls, seconds, its tokens up to KEEP_TOKENS per sample, else
  None)."""
  if length == segment:
    samples = draw_samples(experiment, params, key, start_of(0, length), labels_B, compile_first)
    if writer:
      writer.add(samples.tokens[:rows], samples.order[:rows])
    return samples.nfe, samples.seconds, samples.tokens
  labels = sharding.replicated_array(np.asarray(labels_B, np.int32), experiment.mesh)
  cache, clock, nfe, seconds = experiment.empty_sample_cache(len(labels_B)), 0, 0, 0.0
  block_size, compiled, kept = experiment.config.diffusion.bd3.block_size, set(), []
  settings = experiment.sampler_settings
  end_id = settings.end_id if settings.stop_at_end else -1
  ended_B = np.zeros(len(labels_B), bool)  # rows whose end-of-text is drawn: once all are, no more segments
  progress = tqdm.tqdm(total=length, unit="token", unit_scale=True, leave=False, desc="sampling",
                       disable=writer is None)  # a long sample takes a while: its tokens so far
  for begin in range(0, length, segment):
    end = min(begin + segment, length)  # the last segment may be shorter (the length is whole blocks)
    start = sharding.replicated_array(start_of(begin, end), experiment.mesh)
    arguments = (params, key, start, labels, begin // block_size, cache, clock)
    if compile_first and end - begin not in compiled:  # each segment width once, apart from the timed calls
      experiment.sample_segment.lower(*arguments, total_length=length).compile()
      compiled.add(end - begin)
    start_time = time.perf_counter()
    tokens, segment_nfe, order, cache = experiment.sample_segment(*arguments, total_length=length)
    tokens, segment_nfe, order = jax.device_get((tokens, segment_nfe, order))
    seconds += time.perf_counter() - start_time
    nfe, clock = nfe + int(segment_nfe), max(clock, int(order.max()))
    if writer:
      writer.add(tokens[:rows], order[:rows])
    if length <= KEEP_TOKENS:
      kept.append(tokens)
    progress.update(end - begin)
    ended_B |= np.any(tokens == end_id, axis=1) if end_id >= 0 else False
    if ended_B.all():
      break
  progress.close()
  return nfe, seconds, np.concatenate(kept, axis=1) if kept else None
