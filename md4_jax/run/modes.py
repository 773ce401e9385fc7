"""Entry point behind launch.py: modes train | eval | sample over one workdir, and prepare / params (no workdir).

Workdir layout (CONTRACT): config.json, modality.json (text runs also tokenizer.json), checkpoints/,
metrics.jsonl, tensorboard/, samples/, eval/. This module only dispatches: data sources, backbones,
objectives, eval suites and modalities each live in their own module.
"""

import math
import sys

import jax
import numpy as np
from etils import epath
from flax import nnx

from md4_jax import evals, models, objectives
from md4_jax.data import data_dir, pipeline, prepare_into, tokenizers, zero_shot_sets
from md4_jax.data import modality as modalities
from md4_jax.engine import generate, pictures, sharding
from md4_jax.engine.checkpoints import restore_state
from md4_jax.engine.experiment import Experiment
from md4_jax.errors import UserError
from md4_jax.run import conditioning, config_check, loop
from md4_jax.run import workdir as workdirs
from md4_jax.storage import files
from md4_jax.storage import paths as storage

MODES = ("train", "eval", "sample", "prepare", "params")


def main(config, workdir, mode: str = "train", *, reference, step: int | None = None,
         num_samples: int | None = None, prompt: str | None = None, infill: str | None = None,
         seed: int | None = None, class_label: str | None = None, complete: str | None = None,
         gap_char: str | None = None) -> dict:
  """Validates everything first, then runs `mode`. Returns the eval result (train, eval) or samples.

  prompt / infill (text; gap_char marks infill's gaps), complete / class_label (images) and seed condition and
  seed --mode sample (see md4_jax.conditioning).
  """
  if mode not in MODES:
    raise UserError(f"--mode={mode!r}; choose one of {MODES}")
  if mode == "train" and step is not None:
    raise UserError(f"--step={step} applies to --mode eval and --mode sample. Training always resumes from the "
                    "latest checkpoint in WORKDIR/checkpoints; to continue from step N instead, move the later "
                    "checkpoint directories out of WORKDIR/checkpoints, then run the same command without --step")
  given = [name for name, value in (("--prompt", prompt), ("--infill", infill), ("--seed", seed),
                                    ("--num_samples", num_samples), ("--class_label", class_label),
                                    ("--complete", complete), ("--gap_char", gap_char)) if value is not None]
  if num_samples is not None and num_samples < 1:
    raise UserError(f"--num_samples={num_samples} must be positive")
  if given and mode != "sample":
    raise UserError(f"{', '.join(given)} only apply to --mode sample" +
                    (" (the training seed is --config.seed)" if "--seed" in given else ""))
  config_check.check_keys(config, reference)
  config_check.check_values(config)
  config_check.check_scope(config, reference)
  config_check.check_against_devices(config, mode)  # batch sizes vs the mesh, before any data or compilation
  if mode == "prepare":
    return _prepare(config)
  if mode == "params":
    return _describe(config)
  if not workdir:
    raise UserError(f"--mode {mode} needs --workdir=DIR (the run's directory)")
  workdir = storage.path(workdir)  # a local directory or gs://BUCKET/PATH
  workdirs.check_usable(workdir, mode)
  if mode == "train":
    with workdirs.training_lock(workdir):
      return _train(config, workdir, reference)
  workdirs.check_config(config, workdir, mode, reference)
  saved = modalities.load(workdir, config.data.seq_len)
  if saved is None:
    raise UserError(f"{workdir} holds no modality.json or tokenizer.json; it was not written by a training run")
  if mode == "eval":
    suite = evals.SUITES[config.eval.suite]
    inputs = suite.load(config, workdir, saved)  # before the restore, so a missing input fails fast
  else:
    request = _sample_request(config, saved, num_samples, prompt, infill, class_label, complete, gap_char)
  experiment = Experiment(config, saved, sharding.make_mesh(config.mesh))
  state = restore_state(workdir / "checkpoints", step, experiment.abstract_state, experiment.state_summary)
  restored_step = int(state["step"])
  if mode == "eval":
    return suite.run(evals.Context(config, experiment, _chosen_params(state, config.eval.params), restored_step,
                                   workdir, inputs, loop.sample_key(experiment.base_key, restored_step)))
  record = {"step": restored_step, "params": config.sampler.params, "seed": config.seed if seed is None else seed,
            "prompt": prompt, "infill": infill, "gap_char": gap_char, "complete": complete}
  return _sample(experiment, _chosen_params(state, config.sampler.params), workdir, request, record)


def _prepare(config) -> dict:
  """--mode prepare: the zero-shot benchmarks (eval.suite=zero_shot), or data.source into data.dir."""
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


def _describe(config) -> dict:
  """Parameter count from shapes alone (no data, no compute)."""
  modality = pipeline.nominal_modality(config.data)
  objective = objectives.get(config.objective)(config, modality.vocab_size)
  make_backbone = models.backbone_factory(config, modality, objective.network_requirements)
  wrap = getattr(objective, "wrap_model", None)  # an objective's own parameters (GenMD4's schedule) count too
  make_model = wrap(make_backbone) if wrap else make_backbone
  count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(nnx.eval_shape(
      lambda: make_model(nnx.Rngs(0))))))
  print(f"{count:,} parameters ({make_backbone.args[0].summary()})")
  return {"params": count, "vocab_size": modality.vocab_size}


def _train(config, workdir: epath.Path, reference) -> dict:
  """--mode train, holding the workdir's lock: a new run, or the resumed one (its saved tokenizer)."""
  record = workdirs.check_config(config, workdir, "train", reference)
  if config.train.warmup_steps >= config.train.num_steps and jax.process_index() == 0:
    print(f"warning: train.warmup_steps={config.train.warmup_steps} is not below train.num_steps="
          f"{config.train.num_steps}: the warm-up is cut to {max(config.train.num_steps - 1, 0)} steps, so the "
          "learning rate peaks at the last step", file=sys.stderr)
  resuming = bool(workdirs.committed_steps(workdir / "checkpoints"))
  data = pipeline.load_data(config.data, config.eval.split, modalities.load(workdir, config.data.seq_len)
                            if resuming else None)  # a start that failed before any checkpoint binds nothing
  workdirs.save_config(config, workdir, record)
  if jax.process_index() == 0:
    modalities.save(data.modality, workdir)
  return loop.train(config, workdir, data)


def _sample_request(config, modality, num_samples, prompt, infill, class_label, complete, gap_char=None) -> dict:
  """--mode sample's start state [N, D], labels [N] (or None) and held-out originals (--complete)."""
  count = num_samples or config.sampler.num_samples
  text_flags = [flag for flag, value in (("--prompt", prompt), ("--infill", infill), ("--gap_char", gap_char))
                if value is not None]
  if modality.kind == "image" and text_flags:
    raise UserError(f"{', '.join(text_flags)} condition text runs; this run models images (use --complete or "
                    "--class_label)")
  if modality.kind == "text" and complete is not None:
    raise UserError("--complete completes held-out images; this run models text (use --prompt or --infill)")
  conditional_classes = modality.num_classes if config.model.class_conditional else 0
  labels = (np.resize(conditioning.parse_class_labels(class_label, conditional_classes), count)
            if class_label is not None else None)
  if complete is not None:
    data = pipeline.load_data(config.data, config.eval.split, modality)
    rows = [data.eval[i] for i in range(min(count, len(data.eval)))]
    originals = np.stack([row["tokens"] for row in rows])
    if labels is None and conditional_classes:
      labels = np.asarray([row["label"] for row in rows], np.int32)  # complete each image as its own class
    return {"start": conditioning.completion_start(originals, modality, complete), "labels": labels,
            "originals": originals}
  start = np.full(modality.length, modality.vocab_size, np.int32)
  if modality.kind == "text":
    start = conditioning.start_state(modality.tokenizer, modality.length, prompt=prompt, infill=infill,
                                     gap_char=gap_char)
  return {"start": np.tile(start, (count, 1)), "labels": labels, "originals": None}


def _sample(experiment, params, workdir, request, record) -> dict:
  """--mode sample: samples from the restored checkpoint, written to samples/step_N_<sampler>[_k].*;
  with --complete also step_N_<sampler>_completion.png (original | kept part | completion per row)."""
  key = loop.sample_key(jax.random.key(record["seed"]), record["step"])
  stem = _unused_stem(workdir / "samples", f"step_{record['step']}_{experiment.sampler_settings.name}")
  labels = None if request["labels"] is None else np.asarray(request["labels"], np.int32)
  samples = generate.write_samples(experiment, params, stem, key, request["start"], record, labels)
  paths = list(samples.paths)
  if request["originals"] is not None and jax.process_index() == 0:
    paths.append(stem.with_name(stem.name + "_completion.png"))
    files.write_png_atomically(paths[-1], pictures.completion_rows(request["originals"], request["start"],
                                                                   samples.tokens, experiment.modality))
  if jax.process_index() == 0:
    if experiment.modality.kind == "text":
      for i, row in enumerate(samples.tokens):
        print(f"=== sample {i} ===\n{experiment.modality.tokenizer.decode(row)}\n")
    print(f"{len(samples.tokens)} samples from step {record['step']} ({record['params']} params) with sampler "
          f"{experiment.sampler_settings.name}: {samples.nfe} network calls, {samples.seconds:.1f} s; wrote "
          + ", ".join(str(path) for path in paths))
  texts = ([experiment.modality.tokenizer.decode(row) for row in samples.tokens]
           if experiment.modality.kind == "text" else None)
  return {"samples": texts, "tokens": samples.tokens, "path": str(paths[0]) if paths else None, "nfe": samples.nfe,
          "paths": [str(path) for path in paths]}


def _unused_stem(directory: epath.Path, name: str) -> epath.Path:
  """directory/name, or name_2, name_3, ...: earlier samples are never overwritten."""
  stem, index = directory / name, 1
  while any(stem.with_name(stem.name + suffix).exists() for suffix in (".txt", ".jsonl", ".png")):
    index += 1
    stem = directory / f"{name}_{index}"
  return stem
