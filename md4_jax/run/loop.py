"""The training loop: one jitted step (or train.steps_per_call of them per call), with hooks for metrics,
evaluation, samples and checkpoints.

The host never waits on the call it just dispatched: call N's metrics are read
after call N+1 is queued, except before a hook (eval, checkpoint), which first
checks that the state it is about to use came from finite losses.
"""

import math
import signal
import time

import jax
import tqdm
from etils import epath
from jax.experimental import multihost_utils

from md4_jax.data import pipeline
from md4_jax.engine import generate, sharding
from md4_jax.engine.checkpoints import Checkpointer
from md4_jax.engine.experiment import Experiment
from md4_jax.engine.metrics_log import MetricsLog, ProgressBar
from md4_jax.errors import UserError
from md4_jax.evals import bound, output, powers, report

SAMPLE_SALT = 2  # fold_in tag: sample keys are apart from training and evaluation keys (bound.EVAL_SALT = 1)


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
    # A copy: the checkpoint's JSON is written asynchronously (later still on a bucket), while add() goes on.
    return {"sums": dict(self.sums), "count": self.count}


def sample_key(base_key, step: int):
  """The key of the samples drawn at `step` (training dumps, the samples suite, --mode sample)."""
  return jax.random.fold_in(jax.random.fold_in(base_key, SAMPLE_SALT), step)


def steps_in_call(train_cfg, done: int) -> int:
  """Steps the next call runs after `done` steps: train.steps_per_call (K) when `done` is a multiple of K and the
  K steps end by num_steps with no evaluation or checkpoint due before their last; else 1. Which steps share
  a call depends only on the step numbers and the config, so a resumed run makes the same calls."""
  k = train_cfg.steps_per_call
  if k == 1 or done % k or done + k > train_cfg.num_steps:
    return 1
  hooks_inside = any(step % every == 0 for step in range(done + 1, done + k)
                     for every in (train_cfg.eval_every, train_cfg.checkpoint_every))
  return 1 if hooks_inside else k


def train(config, workdir: epath.Path, data: pipeline.Data) -> dict:
  """Trains to config.train.num_steps, resuming from the latest checkpoint in workdir. Returns the last eval."""
  cfg = config.train
  mesh = sharding.make_mesh(config.mesh)
  experiment = Experiment(config, data.modality, mesh)
  checkpointer = Checkpointer(workdir / "checkpoints", cfg.keep_checkpoints, training=True,
                              summary=experiment.state_summary)
  iterator = iter(pipeline.train_dataset(data.train, cfg.batch_size, config.seed).to_iter_dataset())
  start = 0
  if checkpointer.all_steps():  # the newest intact checkpoint (damaged newer ones are moved aside)
    state, loop_state = checkpointer.restore(None, experiment.abstract_state)
    start = int(state["step"])
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
  # One process notes SIGTERM and SIGINT (Ctrl-C) itself: the step in flight finishes, a checkpoint is
  # written. With several, JAX's preemption service (started by jax.distributed.initialize) catches
  # SIGTERM on any of them and names one step at which all stop.
  several_processes = jax.process_count() > 1
  stop_signals = () if several_processes else (signal.SIGTERM, signal.SIGINT)
  previous_handlers = {signum: signal.signal(signum, lambda signum, frame: stop.update(signal=signum))
                       for signum in stop_signals}
  last_good, last_eval, pending = start or None, {}, None
  bar = ProgressBar(start, cfg.num_steps)  # "compiling" until the first call returns
  window_start, tokens_per_step = time.perf_counter(), cfg.batch_size * data.modality.length
  unit = output.unit(data.modality)

  def read(first, count, metrics):
    """Host side of steps first .. first + count - 1 (one call; with count > 1 each metric has a leading axis)."""
    metrics = jax.device_get(metrics)
    for index in range(count):
      step_metrics = metrics if count == 1 else {key: value[index] for key, value in metrics.items()}
      read_step(first + index, step_metrics)
    bar.step(count, step_metrics["loss"], step_metrics["bits"])  # a call's steps at once: the rate is the calls'

  def read_step(step, metrics):
    """Host side of step `step`: NaN check, window sums, a log line every log_every steps."""
    nonlocal window_start
    bad = [f"the {name} became {metrics[key]}" for name, key in (("loss", "loss"), ("gradient norm", "grad_norm"))
           if not math.isfinite(metrics[key])]
    if bad:
      stop_for_non_finite(" and ".join(bad) + f" at step {step}" + (
          f" (the loss was still {metrics['loss']:.4g})" if math.isfinite(metrics["loss"]) else ""))
    window.add(metrics)
    if step % cfg.log_every == 0:
      seconds = time.perf_counter() - window_start
      log.write(step, {**window.means(), "train/steps_per_sec": window.count / seconds,
                       "train/tokens_per_sec": window.count * tokens_per_step / seconds})
      window.__init__()
      window_start = time.perf_counter()

  def stop_for_non_finite(what):
    kept = (f"The last good checkpoint (step {last_good} in {checkpointer.directory}; its parameters and "
            "optimizer state are finite) is kept. Resume from it" if last_good else
            "No checkpoint was saved yet. Start again")
    raise NonFiniteLoss(f"{what}; training stopped. {kept} with a lower --config.train.learning_rate, a smaller "
                        "--config.train.grad_clip or longer --config.train.warmup_steps (these may change on "
                        "resume), or check the data.")

  def save(step, state):
    """Starts checkpoint `step`: the state, the data iterator's position and the metric window."""
    nonlocal last_good
    summary = jax.device_get(experiment.state_summary(state))
    if not summary["finite"]:
      stop_for_non_finite(f"the parameters or optimizer state hold NaN or Inf at step {step} (loss and gradient "
                          "were finite)")
    checkpointer.save(step, state, {"data": iterator.get_state(), "window": window.to_json(),
                                    "state_checksum": int(summary["checksum"])})
    last_good = step

  def evaluate(step, state) -> dict:
    """The held-out bound (a metrics line), samples and, for a learned schedule, its powers at `step`."""
    bar.pause("evaluating")
    values = {f"eval/{k}": v for k, v in bound.evaluate(experiment, state["ema_params"], data.eval).items()}
    log.write(step, values)
    generate.write_samples(experiment, state["ema_params"], workdir / "samples" / f"step_{step}",
                           sample_key(experiment.base_key, step),
                           generate.unconditional_start(experiment, config.sampler.num_samples),
                           {"step": step, "params": "ema", "seed": config.seed})
    learned = powers.learned_powers(experiment, state["ema_params"])
    if learned is not None and powers.write(workdir, step, learned, data.modality):
      report.write(workdir, config)
    ppl = f" (ppl {values['eval/ppl']:.3f})" if "eval/ppl" in values else ""
    say(f"step {step}: held-out bound {values['eval/bpt']:.4f} {unit}{ppl}; samples in {workdir / 'samples'}")
    return values

  try:
    # A run stopped after checkpointing an evaluation step and before logging its evaluation (a kill during
    # it: the checkpoint is written first) evaluates it now, so its metrics equal an uninterrupted run's.
    if start and (start % cfg.eval_every == 0 or start == cfg.num_steps) and not log.has(start, "eval/bpt"):
      last_eval = evaluate(start, state)
    step = start  # counts completed updates
    while step < cfg.num_steps:
      count = steps_in_call(cfg, step)
      # The steady state may not copy implicitly between host and device (a hidden sync per step);
      # the batch upload and the metric download below are explicit.
      with jax.transfer_guard("disallow"):
        batches = tuple(sharding.global_batch(next(iterator), mesh) for _ in range(count))
        state, metrics = experiment.train_call(state, batches)
        bar.resume()  # the call is compiled (the first one compiles before it returns)
        if pending:
          read(*pending)
      pending, step = (step + 1, count, metrics), step + count
      # Every process asks about every step, in order (a list, not a short-circuiting any()).
      if several_processes and any([multihost_utils.reached_preemption_sync_point(done)
                                    for done in range(step - count + 1, step + 1)]):
        stop["signal"] = signal.SIGTERM
      is_last = step == cfg.num_steps or stop["signal"] is not None
      do_eval = step % cfg.eval_every == 0 or is_last and stop["signal"] is None
      do_save = step % cfg.checkpoint_every == 0 or is_last
      if do_eval or do_save:
        read(*pending)
        pending = None
      if do_save:  # before the evaluation: an error or Ctrl-C there then loses no training
        save(step, state)
      if do_eval:
        last_eval = evaluate(step, state)
      if stop["signal"] is not None:
        if not do_save:  # the signal came during this step's evaluation: keep the step's work too
          save(step, state)
        checkpointer.wait()
        say(f"{signal.Signals(stop['signal']).name}: saved checkpoint {step}; run the same command to resume")
        raise SystemExit(128 + stop["signal"])
  finally:
    bar.close()
    checkpointer.close()
    log.close()
    for signum, handler in previous_handlers.items():
      signal.signal(signum, handler)
  return last_eval
