"""Entry point behind launch.py: modes train | eval | sample over one workdir, and prepare / params (no workdir).

Workdir layout (CONTRACT): config.json, modality.json (text runs also tokenizer.json), checkpoints/,
metrics.jsonl, tensorboard/, samples/, eval/. This module only dispatches: data sources, backbones,
objectives, eval suites and modalities each live in their own module.
"""

import math
import shutil
import sys
from typing import NamedTuple

import jax
import numpy as np
from etils import epath
from flax import nnx

from md4_jax import evals, objectives
from md4_jax.data import data_dir, pictures, pipeline, prepare_into, tokenizers, zero_shot_sets
from md4_jax.data import modality as modalities
from md4_jax.engine import generate, sample_files, sharding, wandb_log
from md4_jax.engine.checkpoints import restore_state
from md4_jax.engine.experiment import Experiment
from md4_jax.errors import UserError
from md4_jax.run import conditioning, config_check, loop
from md4_jax.run import workdir as workdirs
from md4_jax.storage import files
from md4_jax.storage import paths as storage


class Request(NamedTuple):
  """The command line's per-call flags (launch.py): --step for eval/sample, the rest for sample only."""
  step: int | None = None
  prompt: str | None = None
  infill: str | None = None
  seed: int | None = None
  num_samples: int | None = None
  class_label: str | None = None
  complete: str | None = None
  gap_char: str | None = None
  length: int | None = None


def main(config, workdir, mode: str = "train", *, reference, **flags) -> dict:
  """Validates everything first, then runs `mode` (one of MODES). Returns the eval result (train, eval) or samples.

  flags: Request's fields. prompt / infill (text; gap_char marks infill's gaps), complete / class_label (images)
  and seed condition and seed --mode sample (see run/conditioning.py).
  """
  if mode not in MODES:
    raise UserError(f"--mode={mode!r}; choose one of {tuple(MODES)}")
  request = Request(**flags)
  _check_flags(mode, request)
  config_check.check_keys(config, reference)
  config_check.check_values(config)
  config_check.check_scope(config, reference)
  config_check.check_against_devices(config, mode)  # batch sizes vs the mesh, before any data or compilation
  if request.length is not None:
    if pipeline.nominal_modality(config.data).kind == "image":
      raise UserError(f"--length={request.length}: image runs draw whole images; --length applies to text")
    objectives.get(config.objective).check_sample_length(config, request.length)
  if mode in WITHOUT_WORKDIR:
    return MODES[mode](config)
  if not workdir:
    raise UserError(f"--mode {mode} needs --workdir=DIR (the run's directory)")
  workdir = storage.path(workdir)  # a local directory or gs://BUCKET/PATH
  workdirs.check_usable(workdir, mode)
  return MODES[mode](config, workdir, reference, request)


def _check_flags(mode: str, request: Request) -> None:
  if mode == "train" and request.step is not None:
    raise UserError(f"--step={request.step} applies to --mode eval and --mode sample. Training always resumes from "
                    "the latest checkpoint in WORKDIR/checkpoints; to continue from step N instead, move the later "
                    "checkpoint directories out of WORKDIR/checkpoints, then run the same command without --step")
  if request.num_samples is not None and request.num_samples < 1:
    raise UserError(f"--num_samples={request.num_samples} must be positive")
  if request.length is not None and request.length < 1:
    raise UserError(f"--length={request.length} must be positive")
  given = [f"--{name}" for name, value in request._asdict().items() if name != "step" and value is not None]
  if given and mode != "sample":
    raise UserError(f"{', '.join(given)} only apply to --mode sample" +
                    (" (the training seed is --config.seed)" if "--seed" in given else ""))


def _saved_modality(config, workdir: epath.Path, reference, mode: str):
  """eval / sample: the config checked against the run's, and the run's modality (its tokenizer)."""
  workdirs.check_config(config, workdir, mode, reference)
  saved = modalities.load(workdir, config.data.seq_len)
  if saved is None:
    raise UserError(f"{workdir} holds no modality.json or tokenizer.json; it was not written by a training run")
  return saved


def _restore(config, saved, workdir: epath.Path, step: int | None):
  """The run's Experiment and its checkpointed state at `step` (None: the latest)."""
  experiment = Experiment(config, saved, sharding.make_mesh(config.mesh))
  state = restore_state(workdir / "checkpoints", step, experiment.abstract_state, experiment.state_summary)
  return experiment, state


def _evaluate(config, workdir: epath.Path, reference, request: Request) -> dict:
  """--mode eval: config.eval.suite on the checkpoint at --step (the latest by default)."""
  saved = _saved_modality(config, workdir, reference, "eval")
  suite = evals.SUITES[config.eval.suite]
  inputs = suite.load(config, workdir, saved)  # before the restore, so a missing input fails fast
  experiment, state = _restore(config, saved, workdir, request.step)
  step = int(state["step"])
  return suite.run(evals.Context(config, experiment, _chosen_params(state, config.eval.params), step, workdir,
                                 inputs, loop.sample_key(experiment.base_key, step)))


def _sample_mode(config, workdir: epath.Path, reference, request: Request) -> dict:
  """--mode sample: samples from the checkpoint at --step (the latest by default), conditioned as asked."""
  saved = _saved_modality(config, workdir, reference, "sample")
  start = _sample_request(config, saved, request)
  experiment, state = _restore(config, saved, workdir, request.step)
  seed = config.seed if request.seed is None else request.seed
  record = {"step": int(state["step"]), "params": config.sampler.params, "seed": seed, "prompt": request.prompt,
            "infill": request.infill, "gap_char": request.gap_char, "complete": request.complete}
  return _sample(experiment, _chosen_params(state, config.sampler.params), workdir, start, record)


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
  model = objectives.build_model(config, modality)  # an objective's own parameters (GenMD4's schedule) count too
  count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(nnx.eval_shape(
      lambda: model.make(nnx.Rngs(0))))))
  print(f"{count:,} parameters ({model.backbone_config.summary()})")
  return {"params": count, "vocab_size": modality.vocab_size}


def _train(config, workdir: epath.Path, reference, request: Request) -> dict:
  """--mode train, holding the workdir's lock: a new run, or the resumed one (its saved tokenizer)."""
  del request  # _check_flags refused every flag
  with workdirs.training_lock(workdir):
    return _train_locked(config, workdir, reference)


def _train_locked(config, workdir: epath.Path, reference) -> dict:
  record = workdirs.check_config(config, workdir, "train", reference)
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
  return loop.train(config, workdir, data, wandb_id=record.get("wandb_id"))


def _sample_request(config, modality, request: Request) -> dict:
  """--mode sample's draw: count, length, start_of (generate.tiled_start / rows_start), class labels given to the
  samples in turn (or None), held-out originals (--complete)."""
  count = request.num_samples or config.sampler.num_samples
  prompt, infill, gap_char, complete = request.prompt, request.infill, request.gap_char, request.complete
  class_label = request.class_label
  text_flags = [flag for flag, value in (("--prompt", prompt), ("--infill", infill), ("--gap_char", gap_char))
                if value is not None]
  if modality.kind == "image" and text_flags:
    raise UserError(f"{', '.join(text_flags)} condition text runs; this run models images (use --complete or "
                    "--class_label)")
  if modality.kind == "text" and complete is not None:
    raise UserError("--complete completes held-out images; this run models text (use --prompt or --infill)")
  conditional_classes = modality.num_classes if config.model.class_conditional else 0
  labels = conditioning.parse_class_labels(class_label, conditional_classes) if class_label is not None else None
  mask_id = modality.vocab_size
  if complete is not None:
    data = pipeline.load_data(config.data, config.eval.split, modality)
    rows = [data.eval[i] for i in range(min(count, len(data.eval)))]
    originals = np.stack([row["tokens"] for row in rows])
    if labels is None and conditional_classes:
      labels = np.asarray([row["label"] for row in rows], np.int32)  # complete each image as its own class
    start = conditioning.completion_start(originals, modality, complete)
    return {"count": len(rows), "length": modality.length, "start_of": generate.rows_start(start, mask_id),
            "labels": labels, "originals": originals, "start": start}
  length = modality.length if request.length is None else request.length  # checked in main
  known = np.zeros(0, np.int32)
  if modality.kind == "text":
    known = conditioning.known_tokens(modality.tokenizer, length, prompt=prompt, infill=infill, gap_char=gap_char)
  return {"count": count, "length": length, "start_of": generate.tiled_start(known, mask_id), "labels": labels,
          "originals": None}


def _sample(experiment, params, workdir, request, record) -> dict:
  """--mode sample: samples from the restored checkpoint, written to samples/step_N_<sampler>[_k].*;
  with --complete also step_N_<sampler>_completion.png (original | kept part | completion per row). Returns the
  paths and the first batch's samples (all of them when --num_samples <= sampler.batch_size; none for samples
  drawn in segments: read the files)."""
  key = loop.sample_key(jax.random.key(record["seed"]), record["step"])
  name = f"step_{record['step']}_{experiment.sampler_settings.name}" + _stem_details(experiment, request["length"])
  stem = _unused_stem(workdir / "samples", name)
  _check_room(workdir, request["count"], request["length"])
  written = generate.write_samples(experiment, params, stem, key, record, count=request["count"],
                                   length=request["length"], start_of=request["start_of"],
                                   class_labels=request["labels"])
  paths = list(written.paths)
  if request["originals"] is not None and jax.process_index() == 0:
    paths.append(stem.with_name(stem.name + "_completion.png"))
    shown = len(written.first_tokens)
    files.write_png_atomically(paths[-1], pictures.completion_rows(request["originals"][:shown],
                                                                   request["start"][:shown], written.first_tokens,
                                                                   experiment.modality))
  texts = None
  if experiment.modality.kind == "text" and written.first_tokens is not None:
    texts = [experiment.modality.tokenizer.decode(row) for row in written.first_tokens]
  if jax.process_index() == 0:
    _print_samples(experiment, written, texts, record, paths)
  return {"samples": texts, "tokens": written.first_tokens, "path": str(paths[0]) if paths else None,
          "nfe": written.nfe, "paths": [str(path) for path in paths], "count": written.count}


def _print_samples(experiment, written, texts, record, paths) -> None:
  """The first batch's texts (cut when long) and one summary line."""
  if experiment.modality.kind == "text":
    shown = texts if texts is not None else written.previews
    for i, text in enumerate(shown):
      cut = len(text) >= sample_files.PREVIEW_CHARS and texts is None or len(text) > sample_files.PREVIEW_CHARS
      print(f"=== sample {i} ===\n{text[:sample_files.PREVIEW_CHARS]}" +
            (f" ... ({written.length:,} tokens: the whole sample is in the .txt)" if cut else "") + "\n")
    if written.count > len(shown):
      print(f"(the first {len(shown)} of {written.count:,} samples; all of them are in the files below)\n")
  print(f"{written.count:,} samples from step {record['step']} ({record['params']} params) with sampler "
        f"{experiment.sampler_settings.name}: {written.nfe:,} network calls, {written.seconds:.1f} s "
        f"({written.tokens_per_sec:.0f} tokens/s); wrote " + ", ".join(str(path) for path in paths))


def _stem_details(experiment, length: int) -> str:
  """What sets these samples apart in their file name: a length other than the trained one, a KV cache."""
  details = "" if length == experiment.modality.length else f"_len{length}"
  cache = experiment.sampler_settings.kv_cache
  return details + ("" if cache == "none" else f"_{cache}")


def _check_room(workdir: epath.Path, count: int, length: int) -> None:
  """Refuses in one line samples that cannot fit on the workdir's disk: every token takes at least one byte in
  the .txt and one in the .jsonl (text), or a digit and a comma in the .jsonl (images), plus ~300 bytes of
  settings per .jsonl line."""
  if storage.is_remote(workdir):
    return  # a bucket has no fixed size
  needed = count * (2 * length + 300)
  free = shutil.disk_usage(workdir).free
  if needed > free:
    raise UserError(f"{count:,} samples of {length:,} tokens need at least {_size(needed)} in "
                    f"{workdir / 'samples'}, and its disk has {_size(free)} free: ask for fewer (--num_samples, "
                    "--length) or free space")


def _size(num_bytes: int) -> str:
  for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
    if num_bytes >= scale:
      return f"{num_bytes / scale:,.1f} {unit}"
  return f"{num_bytes} bytes"


def _unused_stem(directory: epath.Path, name: str) -> epath.Path:
  """directory/name, or name_2, name_3, ...: earlier samples are never overwritten."""
  stem, index = directory / name, 1
  while any(stem.with_name(stem.name + suffix).exists() for suffix in (".txt", ".jsonl", ".png")):
    index += 1
    stem = directory / f"{name}_{index}"
  return stem


# The modes by name (launch.py's --mode): train / eval / sample take (config, workdir, reference, request);
# prepare and params need no workdir and take the config alone.
MODES = {"train": _train, "eval": _evaluate, "sample": _sample_mode, "prepare": _prepare, "params": _describe}
WITHOUT_WORKDIR = ("prepare", "params")
