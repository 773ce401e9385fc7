"""Entry point behind launch.py: modes train | eval | sample over one workdir, and prepare / params (no workdir).

Workdir layout (CONTRACT): config.json, modality.json (text runs also tokenizer.json), checkpoints/,
metrics.jsonl, tensorboard/, samples/, eval/. This module only dispatches: data sources, backbones,
objectives, eval suites and modalities each live in their own module.
"""

import math
import sys
from typing import NamedTuple

import jax
from etils import epath
from flax import nnx

from md4_jax import evals, objectives, parts
from md4_jax.data import data_dir, pipeline, prepare_into, tokenizers, zero_shot_sets
from md4_jax.data import modality as modalities
from md4_jax.engine import sharding, wandb_log
from md4_jax.engine.checkpoints import restore_state
from md4_jax.engine.experiment import Experiment
from md4_jax.errors import UserError
from md4_jax.interop import export
from md4_jax.run import config_check, loop, sample_mode
from md4_jax.run import workdir as workdirs
from md4_jax.storage import paths as storage


class Request(NamedTuple):
  """The command line's per-call flags (launch.py): --step for eval/sample/export, --format (export_format) for
  export, the rest for sample only."""
  step: int | None = None
  prompt: str | None = None
  infill: str | None = None
  seed: int | None = None
  num_samples: int | None = None
  class_label: str | None = None
  complete: str | None = None
  gap_char: str | None = None
  length: int | None = None
  export_format: str | None = None  # --format
  stop: tuple | None = None  # --stop (repeatable): strings a text sample ends at


def main(config, workdir, mode: str = "train", *, reference, **flags) -> dict:
  """Validates everything first, then runs `mode` (one of MODES). Returns the eval result (train, eval) or samples.

  flags: Request's fields. prompt / infill (text; gap_char marks infill's gaps), complete / class_label (images)
  and seed condition and seed --mode sample (see run/conditioning.py).
  """
  run_mode = parts.find("mode", mode, MODES)  # a module outside the package: its run(config, workdir)
  request = Request(**flags)
  _check_flags(mode, request)
  run = config_check.validate(config, reference, mode)  # the parts found and checked once, before any work
  if request.length is not None:
    if run.modality.kind == "image":
      raise UserError(f"--length={request.length}: image runs draw whole images; --length applies to text")
    run.model.objective.check_sample_length(config, request.length)
  if mode in WITHOUT_WORKDIR:
    return run_mode(run)
  if not workdir:
    raise UserError(f"--mode {mode} needs --workdir=DIR (the run's directory)")
  workdir = storage.path(workdir)  # a local directory or gs://BUCKET/PATH
  if mode not in MODES:
    return run_mode.run(config, workdir)
  workdirs.check_usable(workdir, mode)
  return run_mode(run, workdir, request)


def _check_flags(mode: str, request: Request) -> None:
  if mode == "train" and request.step is not None:
    raise UserError(f"--step={request.step} applies to --mode eval and --mode sample. Training always resumes from "
                    "the latest checkpoint in WORKDIR/checkpoints; to continue from step N instead, move the later "
                    "checkpoint directories out of WORKDIR/checkpoints, then run the same command without --step")
  if request.num_samples is not None and request.num_samples < 1:
    raise UserError(f"--num_samples={request.num_samples} must be positive")
  if request.length is not None and request.length < 1:
    raise UserError(f"--length={request.length} must be positive")
  if request.export_format is not None and mode != "export":
    raise UserError(f"--format={request.export_format} only applies to --mode export")
  given = [f"--{name}" for name, value in request._asdict().items()
           if name not in ("step", "export_format") and value is not None]
  if given and mode != "sample":
    raise UserError(f"{', '.join(given)} only apply to --mode sample" +
                    (" (the training seed is --config.seed)" if "--seed" in given else ""))


def _saved_modality(run, workdir: epath.Path, mode: str):
  """eval / sample: the config checked against the workdir's, and the workdir's modality (its tokenizer)."""
  workdirs.check_config(run.config, workdir, mode, run.schema)
  saved = modalities.load(workdir, run.config.data.seq_len)
  if saved is None:
    raise UserError(f"{workdir} holds no modality.json or tokenizer.json; it was not written by a training run")
  return saved


def _restore(run, saved, workdir: epath.Path, step: int | None):
  """The run's Experiment and its checkpointed state at `step` (None: the latest)."""
  experiment = Experiment(run.config, saved, sharding.make_mesh(run.config.mesh), run.model)
  state = restore_state(workdir / "checkpoints", step, experiment.abstract_state, experiment.state_summary)
  return experiment, state


def _evaluate(run, workdir: epath.Path, request: Request) -> dict:
  """--mode eval: config.eval.suite on the checkpoint at --step (the latest by default)."""
  config, saved = run.config, _saved_modality(run, workdir, "eval")
  inputs = run.suite.load(config, workdir, saved)  # before the restore, so a missing input fails fast
  experiment, state = _restore(run, saved, workdir, request.step)
  step = int(state["step"])
  return run.suite.run(evals.Context(config, experiment, _chosen_params(state, config.eval.params), step, workdir,
                                 inputs, loop.sample_key(experiment.base_key, step)))


def _sample_mode(run, workdir: epath.Path, request: Request) -> dict:
  """--mode sample: samples from the checkpoint at --step (the latest by default), conditioned as asked."""
  config, saved = run.config, _saved_modality(run, workdir, "sample")
  draw = sample_mode.parse_request(config, saved, request)  # before the restore: a bad request fails fast
  experiment, state = _restore(run, saved, workdir, request.step)
  seed = config.seed if request.seed is None else request.seed
  record = {"step": int(state["step"]), "params": config.sampler.params, "seed": seed, "prompt": request.prompt,
            "infill": request.infill, "gap_char": request.gap_char, "complete": request.complete}
  return sample_mode.write(experiment, _chosen_params(state, config.sampler.params), workdir, draw, record)


def _export(run, workdir: epath.Path, request: Request) -> dict:
  """--mode export: the checkpoint at --step (the latest) as --format (safetensors by default), in
  WORKDIR/export/step_N_FORMAT; eval.params picks the EMA or raw weights."""
  config, saved = run.config, _saved_modality(run, workdir, "export")
  fmt = request.export_format or "safetensors"
  if fmt == "hf":  # refused before the restore
    export.hf_model_config(config, saved.vocab_size, getattr(saved.tokenizer, "eos_id", None))
  _, state = _restore(run, saved, workdir, request.step)
  params, step = _chosen_params(state, config.eval.params), int(state["step"])
  directory = workdir / "export" / f"step_{step}_{fmt}"
  if fmt == "hf":
    export.write_hf(params, config, saved.tokenizer, directory)
  else:
    export.write_safetensors(params, config, directory)
  print(f"exported the {config.eval.params} params of step {step} ({fmt}) to {directory}")
  return {"directory": str(directory), "step": step}


def _prepare(run) -> dict:
  """--mode prepare: the zero-shot benchmarks (eval.suite=zero_shot), or data.source into data.dir."""
  config = run.config
  if config.eval.suite == "zero_shot":
    tokenizer = tokenizers.make_tokenizer(config.data.tokenizer, config.data.tokenizer_path,
                                          alphabet=tokenizers.TEXT8_ALPHABET)
    root, names = data_dir(config.data), zero_shot_sets.parse_names(config.eval.zero_shot)
    where = prepare_into(config.data, zero_shot_sets.stream_dir(root, tokenizer),
                         lambda: zero_shot_sets.prepare(names, root, tokenizer)[0].parent)
    print(f"prepared the zero-shot benchmarks {', '.join(names)} in {where}")
    return {}
  print(f"prepared data.source={config.data.source!r}: {pipeline.prepare(config.data)}")
  return {}


def _chosen_params(state, which: str):
  """The EMA ("ema") or raw ("raw") weights of a restored state."""
  return state["ema_params"] if which == "ema" else state["params"]


def _describe(run) -> dict:
  """Parameter count from shapes alone (no data, no compute)."""
  modality = run.source.modality(run.config.data)
  model = objectives.build_model(run.config, modality, run.model)  # an objective's own parameters (GenMD4's schedule) count too
  count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(nnx.eval_shape(
      lambda: model.make(nnx.Rngs(0))))))
  print(f"{count:,} parameters ({model.backbone_config.summary()})")
  return {"params": count, "vocab_size": modality.vocab_size}


def _train(run, workdir: epath.Path, request: Request) -> dict:
  """--mode train, holding the workdir's lock: a new run, or the resumed one (its saved tokenizer)."""
  del request  # _check_flags refused every flag
  with workdirs.training_lock(workdir):
    return _train_locked(run, workdir)


def _train_locked(run, workdir: epath.Path) -> dict:
  config, record = run.config, workdirs.check_config(run.config, workdir, "train", run.schema)
  if config.train.warmup_steps >= config.train.num_steps and jax.process_index() == 0:
    print(f"warning: train.warmup_steps={config.train.warmup_steps} is not below train.num_steps="
          f"{config.train.num_steps}: the warm-up is cut to {max(config.train.num_steps - 1, 0)} steps, so the "
          "learning rate peaks at the last step", file=sys.stderr)
  resuming = bool(workdirs.committed_steps(workdir / "checkpoints"))
  data = pipeline.load_data(config.data, config.eval.split, modalities.load(workdir, config.data.seq_len)
                            if resuming else None)  # a start that failed before any checkpoint binds nothing
  if config.wandb.project:
    record.setdefault("wandb_id", wandb_log.new_run_id())  # one W&B run per workdir, resumed runs included
  workdirs.save_config(config, workdir, record)
  if jax.process_index() == 0:
    modalities.save(data.modality, workdir)
  return loop.train(config, workdir, data, run.model, wandb_id=record.get("wandb_id"))


# The modes by name (launch.py's --mode): train / eval / sample take (run: config_check.Run, workdir, request);
# prepare and params need no workdir and take the run alone. A mode outside the package is a module path whose
# module has run(config, workdir) (the config checked, the workdir given).
MODES = {"train": _train, "eval": _evaluate, "sample": _sample_mode, "prepare": _prepare, "params": _describe,
         "export": _export}
WITHOUT_WORKDIR = ("prepare", "params")
