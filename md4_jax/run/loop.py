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
from md4_jax.engine import generate, profiling, sharding
from md4_jax.engine.checkpoints import Checkpointer
from md4_jax.engine.experiment import Experiment
from md4_jax.engine.metrics_log import MetricsLog, ProgressBar
from md4_jax.errors import UserError
from md4_jax.evals import bound, output, report
from md4_jax.run import init_from

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
    self.sums, self.count, self.started = dict(sums or {}), count, time.perf_counter()

  def add(self, metrics: dict) -> None:
    for key, value in metrics.items():
      self.sums[key] = self.sums.get(key, 0.0) + float(value)
    self.count += 1

  def means(self, tokens_per_step: int) -> dict:
    """The window's mean metrics, and its steps and tokens per second (wall clock, since it started)."""
    seconds = time.perf_counter() - self.started
    return {**{f"train/{key}": value / self.count for key, value in self.sums.items()},
            "train/steps_per_sec": self.count / seconds, "train/tokens_per_sec": self.count * tokens_per_step / seconds}

  def reset(self) -> None:
    self.sums, self.count, self.started = {}, 0, time.perf_counter()

  def to_json(self) -> dict:
    # A copy: the checkpoint's JSON is written asynchronously (later still on a bucket), while add() goes on.
    return {"sums": dict(self.sums), "count": self.count}


class StopRequest:
  """Whether to stop after the step in flight, with a checkpoint. One process notes SIGTERM and SIGINT (Ctrl-C)
  itself; with several, JAX's preemption service (started by jax.distributed.initialize) catches SIGTERM on any
  of them and names one step at which all stop."""

  def __init__(self):
    self.signum, self.several_processes = None, jax.process_count() > 1
    self._previous = {}

  def __enter__(self) -> "StopRequest":
    for signum in () if self.several_processes else (signal.SIGTERM, signal.SIGINT):
      self._previous[signum] = signal.signal(signum, lambda signum, frame: setattr(self, "signum", signum))
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def poll(self, first: int, last: int) -> None:
    """Steps first..last are done: every process asks about every step, in order (a list, not a short-circuiting
    any())."""
    if self.several_processes and any([multihost_utils.reached_preemption_sync_point(step)
                                       for step in range(first, last + 1)]):
      self.signum = signal.SIGTERM


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


class Training:
  """What one train() call holds: the experiment and its mesh, the data iterator, the checkpointer, the metrics
  log and window, the progress bar, and the last step whose checkpoint is known good."""

  def __init__(self, config, workdir: epath.Path, data: pipeline.Data, model_parts=None, wandb_id: str | None = None):
    cfg = self.cfg = config.train
    self.config, self.workdir, self.data, self.wandb_id = config, workdir, data, wandb_id
    self.mesh = sharding.make_mesh(config.mesh)
    self.experiment = Experiment(config, data.modality, self.mesh, model_parts)
    self.checkpointer = Checkpointer(workdir / "checkpoints", cfg.keep_checkpoints, training=True,
                                     summary=self.experiment.state_summary)
    self.iterator = iter(pipeline.train_dataset(data.train, cfg.batch_size, config.seed).to_iter_dataset())
    self.window, self.last_good = MetricWindow(), None
    self.tokens_per_step = cfg.batch_size * data.modality.length
    self.profile = profiling.ProfileWindow(workdir, cfg.profile_steps, cfg.num_steps)

  def start(self):
    """(state, step): the newest intact checkpoint's (damaged newer ones are moved aside), or a new state at 0;
    then the metrics log (torn or later lines dropped) and the progress bar from that step."""
    start = 0
    if self.checkpointer.all_steps():
      state, loop_state = self.checkpointer.restore(None, self.experiment.abstract_state)
      start = self.last_good = int(state["step"])
      self.iterator.set_state(loop_state["data"])
      self.window = MetricWindow(**loop_state["window"])
    elif self.config.model.init_from:  # restore order: the workdir, then model.init_from, then random weights
      state, source_step = init_from.initial_state(self.experiment, self.config.model.init_from,
                                                   self.config.model.init_step)
      say(f"starting from the weights in {self.config.model.init_from}" +
          (f" (step {source_step}, EMA params)" if source_step is not None else ""))
    else:
      state = self.experiment.init_state(self.experiment.base_key)
    done = start >= self.cfg.num_steps
    if start and not done:
      say(f"resuming from step {start} ({self.checkpointer.directory / str(start)})")
    if done:  # one line: no model line, no progress bar (an evaluation the last run missed still runs)
      say(f"{self.workdir} is already trained to step {start} (train.num_steps={self.cfg.num_steps}); raise "
          "--config.train.num_steps to continue")
    else:
      say(f"model: {self.experiment.num_params():,} parameters; writing metrics to "
          f"{self.workdir / 'metrics.jsonl'}, checkpoints to {self.checkpointer.directory}, samples to "
          f"{self.workdir / 'samples'}")
    self.log = MetricsLog(self.workdir, resume_step=start, config=self.config, wandb_id=self.wandb_id)
    self.bar = ProgressBar(start, self.cfg.num_steps, quiet=done)  # "compiling" until the first call returns
    self.window.started = time.perf_counter()
    return state, start

  def call(self, state, count: int):
    """Dispatches `count` steps (one call) on the next batches; returns (state, metrics) without waiting."""
    batches = tuple(sharding.global_batch(next(self.iterator), self.mesh) for _ in range(count))
    return self.experiment.train_call(state, batches)

  def read(self, first: int, count: int, metrics) -> None:
    """Host side of steps first .. first + count - 1 (one call; with count > 1 each metric has a leading axis)."""
    metrics = jax.device_get(metrics)
    for index in range(count):
      step_metrics = metrics if count == 1 else {key: value[index] for key, value in metrics.items()}
      self._read_step(first + index, step_metrics)
    self.bar.step(count, step_metrics["loss"], step_metrics["bits"])  # a call's steps at once: the calls' rate

  def _read_step(self, step: int, metrics: dict) -> None:
    """NaN check, window sums, a log line every log_every steps."""
    bad = [f"the {name} became {metrics[key]}" for name, key in (("loss", "loss"), ("gradient norm", "grad_norm"))
           if not math.isfinite(metrics[key])]
    if bad:
      self._stop_for_non_finite(" and ".join(bad) + f" at step {step}" + (
          f" (the loss was still {metrics['loss']:.4g})" if math.isfinite(metrics["loss"]) else ""))
    self.window.add(metrics)
    if step % self.cfg.log_every == 0:
      self.log.write(step, self.window.means(self.tokens_per_step))
      self.window.reset()

  def _stop_for_non_finite(self, what: str) -> None:
    kept = (f"The last good checkpoint (step {self.last_good} in {self.checkpointer.directory}; its parameters and "
            "optimizer state are finite) is kept. Resume from it" if self.last_good else
            "No checkpoint was saved yet. Start again")
    raise NonFiniteLoss(f"{what}; training stopped. {kept} with a lower --config.train.learning_rate, a smaller "
                        "--config.train.grad_clip or longer --config.train.warmup_steps (these may change on "
                        "resume), or check the data.")

  def save(self, step: int, state) -> None:
    """Starts checkpoint `step`: the state, the data iterator's position and the metric window."""
    summary = jax.device_get(self.experiment.state_summary(state))
    if not summary["finite"]:
      self._stop_for_non_finite(f"the parameters or optimizer state hold NaN or Inf at step {step} (loss and "
                                "gradient were finite)")
    self.checkpointer.save(step, state, {"data": self.iterator.get_state(), "window": self.window.to_json(),
                                         "state_checksum": int(summary["checksum"])})
    self.last_good = step

  def evaluate(self, step: int, state) -> dict:
    """The held-out bound (a metrics line), samples and the objective's extras (GenMD4's powers) at `step`."""
    experiment, workdir, ema_params = self.experiment, self.workdir, state["ema_params"]
    self.bar.pause("evaluating")
    values = {f"eval/{k}": v for k, v in bound.evaluate(experiment, ema_params, self.data.eval).items()}
    self.log.write(step, values)
    written = generate.write_samples(experiment, ema_params, workdir / "samples" / f"step_{step}",
                                     sample_key(experiment.base_key, step),
                                     {"step": step, "params": "ema", "seed": self.config.seed},
                                     count=self.config.sampler.num_samples, length=experiment.modality.length,
                                     start_of=generate.tiled_start([], experiment.vocab_size))
    self.log.samples(step, written.paths)
    if experiment.eval_extras(ema_params, step, workdir):  # files for the report
      report.write(workdir, self.config)
    ppl = f" (ppl {values['eval/ppl']:.3f})" if "eval/ppl" in values else ""
    say(f"step {step}: held-out bound {values['eval/bpt']:.4f} {output.unit(self.data.modality)}{ppl}; samples "
        f"in {workdir / 'samples'}")
    return values

  def close(self) -> None:
    self.profile.close()
    self.bar.close()
    self.checkpointer.close()
    self.log.close()


def train(config, workdir: epath.Path, data: pipeline.Data, model_parts=None, wandb_id: str | None = None) -> dict:
  """Trains to config.train.num_steps, resuming from the latest checkpoint in workdir. Returns the last eval.
  model_parts: objectives.Parts as the run's validation found them (default: found by name);
  wandb_id: the workdir's W&B run (config.json's run record), when wandb.project is set."""
  training = Training(config, workdir, data, model_parts, wandb_id)
  state, start = training.start()
  with StopRequest() as stop:
    try:
      return _run(training, stop, state, start)
    finally:
      training.close()


def _run(training: Training, stop: StopRequest, state, start: int) -> dict:
  """The steps from `start` to train.num_steps, with evaluations and checkpoints where due."""
  cfg, last_eval, pending = training.cfg, {}, None
  # A run stopped after checkpointing an evaluation step and before logging its evaluation (a kill during
  # it: the checkpoint is written first) evaluates it now, so its metrics equal an uninterrupted run's.
  if start and (start % cfg.eval_every == 0 or start == cfg.num_steps) and not training.log.has(start, "eval/bpt"):
    last_eval = training.evaluate(start, state)
  step = start  # counts completed updates
  while step < cfg.num_steps:
    count = steps_in_call(cfg, step)
    # The steady state may not copy implicitly between host and device (a hidden sync per step);
    # the batch upload and the metric download are explicit.
    training.profile.before_call(step)
    with jax.transfer_guard("disallow"):
      state, metrics = training.call(state, count)
      training.bar.resume()  # the call is compiled (the first one compiles before it returns)
      if pending:
        training.read(*pending)  # the previous call's metrics, read while this one runs
    pending, step = (step + 1, count, metrics), step + count
    training.profile.after_call(step, (state, metrics))
    stop.poll(step - count + 1, step)
    is_last = step == cfg.num_steps or stop.signum is not None
    do_eval = step % cfg.eval_every == 0 or is_last and stop.signum is None
    do_save = step % cfg.checkpoint_every == 0 or is_last
    if do_eval or do_save:
      training.read(*pending)
      pending = None
    if do_save:  # before the evaluation: an error or Ctrl-C there then loses no training
      training.save(step, state)
    if do_eval:
      last_eval = training.evaluate(step, state)
    if stop.signum is not None:
      if not do_save:  # the signal came during this step's evaluation: keep the step's work too
        training.save(step, state)
      training.checkpointer.wait()
      say(f"{signal.Signals(stop.signum).name}: saved checkpoint {step}; run the same command to resume")
      raise SystemExit(128 + stop.signum)
  return last_eval
