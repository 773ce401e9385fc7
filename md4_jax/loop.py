"""The training loop: one jitted step, with hooks for metrics, evaluation, samples and checkpoints.

The host never waits on the step it just dispatched: step N's metrics are read
after step N+1 is queued, except before a hook (eval, checkpoint), which first
checks that the state it is about to use came from finite losses.
"""

import dataclasses
import json
import math
import pathlib
import signal
import time

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from md4_jax import files, sharding
from md4_jax.checkpoints import Checkpointer
from md4_jax.data import pipeline
from md4_jax.errors import UserError
from md4_jax.logging import MetricsLog, progress_bar
from md4_jax.train import Experiment, summarize_eval

EVAL_SALT, SAMPLE_SALT = 1, 2  # fold_in tags: evaluation and sample keys are apart from training keys


class NonFiniteLoss(UserError):
  pass


def say(message: str) -> None:
  """Progress messages come from process 0 only (every process runs the same loop)."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


class MetricWindow:
  """Sums of train metrics since the last log line; saved with checkpoints so resumed means are exact."""

  def __init__(self, sums=None, count=0):
    self.sums, self.count = dict(sums or {}), count

  def add(self, metrics: dict) -> None:
    for key, value in metrics.items():
      self.sums[key] = self.sums.get(key, 0.0) + float(value)
    self.count += 1

  def means(self) -> dict:
    return {f"train/{key}": value / self.count for key, value in self.sums.items()}

  def to_json(self) -> dict:
    return {"sums": self.sums, "count": self.count}


def evaluate(experiment: Experiment, params, data: pipeline.Data, max_sequences: int | None = None) -> dict:
  """The negative-ELBO bound over the whole held-out split, or its first `max_sequences` (default
  eval.max_sequences; 0 = all)."""
  cfg = experiment.config
  base = jax.random.fold_in(experiment.base_key, EVAL_SALT)
  totals = {}
  max_sequences = cfg.eval.max_sequences if max_sequences is None else max_sequences
  batches = pipeline.eval_batches(data.eval, cfg.eval.batch_size, max_sequences)
  for index, batch in enumerate(batches):
    sums = experiment.eval_step(params, sharding.global_batch(batch, experiment.mesh), jax.random.fold_in(base, index))
    for key, value in jax.device_get(sums).items():
      totals[key] = totals.get(key, 0.0) + float(value)
  return summarize_eval(totals)


def write_samples(experiment: Experiment, params, tokenizer, stem: pathlib.Path, key, start_NxL: np.ndarray,
                  record: dict) -> tuple[list[str], int, float]:
  """Fills the mask ids of start_NxL with the configured sampler; writes stem.txt (readable) and stem.jsonl
  (one object per sample: text, NFE, sampler settings and `record`). Returns (texts, NFE, seconds)."""
  tokens_NxL, nfe, seconds = draw_samples(experiment, params, key, start_NxL)
  texts = [tokenizer.decode(row) for row in np.asarray(tokens_NxL)]
  if jax.process_index() == 0:
    stem.parent.mkdir(parents=True, exist_ok=True)
    settings = dataclasses.asdict(experiment.sampler_settings)
    files.write_text_atomically(stem.with_name(stem.name + ".txt"),
                                "".join(f"=== sample {i} ===\n{text}\n\n" for i, text in enumerate(texts)))
    files.write_text_atomically(stem.with_name(stem.name + ".jsonl"), "".join(
        json.dumps({"index": i, "text": text, **record, "sampler": settings, "nfe": nfe,
                    "seconds": round(seconds, 3)}) + "\n" for i, text in enumerate(texts)))
  return texts, nfe, seconds


def draw_samples(experiment: Experiment, params, key, start_NxL: np.ndarray) -> tuple[np.ndarray, int, float]:
  """(tokens_NxL, NFE, seconds of the call without compilation): start_NxL's mask ids filled."""
  start_NxL = sharding.replicated_array(start_NxL, experiment.mesh)
  experiment.sample.lower(params, key, start_NxL).compile()  # compiled apart from the timed call (jit reuses it)
  start_time = time.perf_counter()
  tokens_NxL, nfe = jax.device_get(experiment.sample(params, key, start_NxL))
  return np.asarray(tokens_NxL), int(nfe), time.perf_counter() - start_time


def unconditional_start(experiment: Experiment, num_samples: int) -> np.ndarray:
  """[num_samples, seq_len] of mask ids: generate everything."""
  return np.full((num_samples, experiment.config.data.seq_len), experiment.vocab_size, np.int32)


def train(config, workdir: pathlib.Path, data: pipeline.Data) -> dict:
  """Trains to config.train.num_steps, resuming from the latest checkpoint in workdir. Returns the last eval."""
  cfg = config.train
  mesh = sharding.make_mesh(config.mesh)
  experiment = Experiment(config, data.tokenizer.vocab_size, mesh)
  checkpointer = Checkpointer(workdir / "checkpoints", cfg.keep_checkpoints)
  iterator = iter(pipeline.train_dataset(data.train, cfg.batch_size, config.seed).to_iter_dataset())
  start = checkpointer.latest_step() or 0
  if start:
    state, loop_state = checkpointer.restore(start, experiment.abstract_state)
    iterator.set_state(loop_state["data"])
    window = MetricWindow(**loop_state["window"])
    say(f"resuming from step {start} ({checkpointer.directory / str(start)})")
  else:
    state, window = experiment.init_state(experiment.base_key), MetricWindow()
  if start >= cfg.num_steps:
    say(f"{workdir} is already trained to step {start}; raise --config.train.num_steps to continue")
  say(f"model: {experiment.num_params():,} parameters; writing metrics to {workdir / 'metrics.jsonl'}, "
        f"checkpoints to {checkpointer.directory}, samples to {workdir / 'samples'}")
  log = MetricsLog(workdir, resume_step=start)
  stop = {"signal": None}
  # One process notes SIGTERM itself. With several, JAX's preemption service (started by
  # jax.distributed.initialize) catches SIGTERM on any of them and names one step at which all stop.
  several_processes = jax.process_count() > 1
  if not several_processes:
    previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
  last_good, last_eval, pending = start or None, {}, None
  bar = progress_bar(start, cfg.num_steps)
  window_start, tokens_per_step = time.perf_counter(), cfg.batch_size * config.data.seq_len

  def read(step, metrics):
    """Host side of step `step`: NaN check, window sums, a log line every log_every steps."""
    nonlocal window_start
    metrics = jax.device_get(metrics)
    if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
      where = f"step {last_good} in {checkpointer.directory}" if last_good else "none yet"
      raise NonFiniteLoss(f"the loss or gradient became {metrics['loss']} at step {step}; training stopped. "
                          f"The last good checkpoint ({where}) is kept. Lower train.learning_rate or "
                          "train.grad_clip, or check the data, then resume with the same command.")
    window.add(metrics)
    bar.update(1)
    bar.set_postfix(loss=f"{metrics['loss']:.4f}", bits=f"{metrics['bits']:.3f}", refresh=False)
    if step % cfg.log_every == 0:
      seconds = time.perf_counter() - window_start
      log.write(step, {**window.means(), "train/steps_per_sec": window.count / seconds,
                       "train/tokens_per_sec": window.count * tokens_per_step / seconds})
      window.__init__()
      window_start = time.perf_counter()

  try:
    for step in range(start + 1, cfg.num_steps + 1):  # `step` counts completed updates
      # The steady state may not copy implicitly between host and device (a hidden sync per step);
      # the batch upload and the metric download below are explicit.
      with jax.transfer_guard("disallow"):
        batch = sharding.global_batch(next(iterator), mesh)
        state, metrics = experiment.train_step(state, batch)
        if pending:
          read(*pending)
      pending = (step, metrics)
      if several_processes and multihost_utils.reached_preemption_sync_point(step):
        stop["signal"] = signal.SIGTERM
      is_last = step == cfg.num_steps or stop["signal"] is not None
      do_eval = step % cfg.eval_every == 0 or is_last and stop["signal"] is None
      do_save = step % cfg.checkpoint_every == 0 or is_last
      if do_eval or do_save:
        read(*pending)
        pending = None
      if do_eval:
        last_eval = {f"eval/{k}": v for k, v in evaluate(experiment, state["ema_params"], data).items()}
        log.write(step, last_eval)
        sample_key = jax.random.fold_in(jax.random.fold_in(experiment.base_key, SAMPLE_SALT), step)
        write_samples(experiment, state["ema_params"], data.tokenizer, workdir / "samples" / f"step_{step}",
                      sample_key, unconditional_start(experiment, config.sampler.num_samples),
                      {"step": step, "params": "ema", "seed": config.seed})
        say(f"step {step}: held-out bound {last_eval['eval/bpt']:.4f} bits/token "
                  f"(ppl {last_eval['eval/ppl']:.3f}); samples in {workdir / 'samples'}")
      if do_save:
        checkpointer.save(step, state, {"data": iterator.get_state(), "window": window.to_json()})
        last_good = step
      if stop["signal"] is not None:
        checkpointer.wait()
        say(f"SIGTERM: saved checkpoint {step}; run the same command to resume")
        raise SystemExit(128 + stop["signal"])
  finally:
    bar.close()
    checkpointer.close()
    log.close()
    if not several_processes:
      signal.signal(signal.SIGTERM, previous_handler)
  return last_eval
