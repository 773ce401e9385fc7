"""Config validation before any work: unknown keys, wrong types, bad values, incompatible workdirs.

Every problem is a `UserError` that names the key and the fix.
"""

import math
from typing import NamedTuple

import jax

from md4_jax import evals, models, objectives, parts, samplers
from md4_jax.core import schedules
from md4_jax.data import modality, sources, tokenizers, zero_shot_sets
from md4_jax.engine import profiling, sharding, wandb_log
from md4_jax.engine.saved_config import RENAMED, RUN_RECORD, migrate  # noqa: F401 (this module's interface)
from md4_jax.errors import UserError
from md4_jax.run import config_scope, init_from
from md4_jax.run.config_keys import flatten  # {"a.b": value}; the light module owns it (launch.py --help needs it)

# Keys a resumed run may change: they do not alter what the checkpoint means.
# grad_accum changes only which random numbers are drawn; remat, attention, scan_unroll, logits_capacity and
# steps_per_call change only cost.
# Data locations may move between machines (what is read there is checked: prepared meta, BPE checksum).
RESUMABLE_CHANGES = ("train.num_steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.profile_steps", "train.grad_accum", "train.logits_capacity",
                     "model.remat", "model.attention", "model.transformer.scan_unroll", "train.steps_per_call",
                     "data.dir", "data.manual_dir", "data.tokenizer_path", "eval.", "sampler.", "mesh.", "wandb.",
                     "plugins")
# The general keys that must be positive (a part's own keys are checked by the part).
POSITIVE_INTS = ("data.seq_len", "train.num_steps", "train.batch_size", "train.log_every", "train.eval_every",
                 "train.checkpoint_every", "train.keep_checkpoints", "train.grad_accum", "train.steps_per_call",
                 "eval.batch_size", "eval.time_samples", "sampler.steps", "sampler.num_samples", "sampler.batch_size")


def _type_ok(value, default) -> bool:
  if isinstance(default, bool) or isinstance(value, bool):
    return type(value) is type(default)
  if isinstance(default, float):
    return isinstance(value, (int, float))
  return isinstance(value, type(default))


class Run(NamedTuple):
  """A config checked and worked out once (`validate`): what the modes read, its parts found once."""
  config: object
  schema: object  # configs/base.py's config with the outside parts' groups: every key's default (older workdirs)
  modality: object  # the nominal modality, as far as it is known without data (a text vocabulary is a placeholder)
  source: sources.Source  # data.source's
  model: objectives.Parts  # the objective's class and the backbone's module (Experiment builds the model from them)
  suite: object  # eval.suite's module


def validate(config, reference, mode: str) -> Run:
  """Every check that needs no data or workdir, in order: keys and types against the schema (configs/base.py's
  `reference` with the groups of the parts outside md4_jax the config names), the parts it chooses, values (each
  part checks its own), keys set where they have no effect, batch sizes against the mesh."""
  schema_config = schema(config, reference)
  flat, defaults = flatten(config), flatten(schema_config)
  check_keys(flat, defaults)
  if config.model.init_from:  # the source's weights fix the network's keys
    init_from.apply(config, schema_config, config.model.init_from)
    flat = flatten(config)
  source, model, suite = choose(config)
  nominal = check_values(config, flat, source, model)
  config_scope.check_applicable(flat, config, defaults)  # after the values: a bad value is named as such
  check_against_devices(config, mode)
  return Run(config, schema_config, nominal, source, model, suite)


def choose(config) -> tuple:
  """(the source, the model's parts, the eval suite's module) config chooses, each found once (and its
  tokenizer); UserError for a name that is not known or a module outside md4_jax that lacks what its kind needs."""
  found = parts.find_chosen(config, {"source": sources.BUILTIN, "tokenizer": tokenizers.TOKENIZERS,
                                     "objective": objectives.BUILTIN, "backbone": models.BUILTIN,
                                     "suite": evals.SUITES})
  model = objectives.Parts(found["objective"].OBJECTIVE, found["backbone"])
  return sources.Source.of_module(config.data.source, found["source"]), model, found["suite"]


def schema(config, reference):
  """`reference` (configs/base.py's config) with the groups of the parts outside md4_jax that `config` names; those
  groups are added to `config` too where it lacks them (a part chosen on the command line), at their defaults."""
  reference = reference.copy_and_resolve_references()
  parts.add_plugin_groups(config, also=reference)
  return reference


def check_keys(flat: dict, known: dict) -> None:
  """Every key of the config (`flat`: flattened) exists in the schema (`known`: configs/base.py with the groups of
  the parts outside md4_jax the config names, flattened) with a value of the same type."""
  for key, value in flat.items():
    if key in RENAMED:
      new_key, how = RENAMED[key]
      raise UserError(f"config key {key!r} was replaced by {new_key!r}: {how}")
    if key not in known:
      raise UserError(unknown_key(key, known))
    if not _type_ok(value, known[key]):
      raise UserError(f"config key {key!r} = {value!r} is a {type(value).__name__}; it must be a "
                      f"{type(known[key]).__name__} like its default {known[key]!r}")
  missing = sorted(set(known) - set(flat))
  if missing:
    raise UserError(f"config lacks keys {missing}; build configs on configs/base.py (import it and override)")


def unknown_key(key: str, known: dict) -> str:
  """The message for a key that configs/base.py lacks: the keys of its group (or of the config), so a typo is
  seen at once. known: configs/base.py, flattened."""
  group = key.rpartition(".")[0]
  while group and not any(k.startswith(group + ".") for k in known):  # an unknown group: list its parent's
    group = group.rpartition(".")[0]
  prefix = f"{group}." if group else ""
  children = {k[len(prefix):].split(".")[0] for k in known if k.startswith(prefix)}
  siblings = sorted(prefix + child + (".*" if prefix + child not in known else "") for child in children)
  return (f"unknown config key {key!r}; the keys of {group or 'the config'!r} are: {', '.join(siblings)} "
          f"(python launch.py --help={group or 'all'} lists them with their defaults and comments)")


def _check_choices(flat: dict, choices: dict) -> None:
  for key, allowed in choices.items():
    if flat[key] not in allowed:
      raise UserError(f"config key {key!r} = {flat[key]!r}; choose one of {allowed}")


def check_values(config, flat: dict, source: sources.Source, model: objectives.Parts):
  """Values each key accepts, checked up front so no run dies after minutes of work: the general keys here, each
  chosen part's own keys by the part (its check_config, or its build for a backbone). Returns the run's modality
  as far as it is known without reading data (a text run's vocabulary is a placeholder).
  flat: the config flattened; source, model: the parts it chooses (`choose`)."""
  for key in POSITIVE_INTS:
    if flat[key] <= 0:
      raise UserError(f"config key {key!r} = {flat[key]} must be positive")
  if config.eval.timesteps < -1:
    raise UserError(f"eval.timesteps={config.eval.timesteps}: use -1 (as trained), 0 (continuous) or T > 0 steps")
  if config.diffusion.timesteps < 0:
    raise UserError(f"diffusion.timesteps={config.diffusion.timesteps}: use 0 (continuous) or T > 0 steps")
  _check_choices(flat, {"eval.split": ("validation", "test"), "eval.params": ("ema", "raw")})
  if source.module is not None:
    parts.check_config(source.module, config)
  # The backbone's own checks, on the source's shape (text: any vocabulary; images: known without data).
  shape = source.modality(config.data) if source.kind == "image" else modality.Text(2, config.data.seq_len)
  try:
    schedules.get_schedule(config.diffusion.schedule)
    samplers.time_grid(1, config.sampler.grid)
    objectives.build_model(config, shape, model)
  except ValueError as error:
    raise UserError(f"bad config value: {error}") from error
  if not 0.0 <= config.model.label_dropout < 1.0:
    raise UserError(f"model.label_dropout={config.model.label_dropout} must be in [0, 1)")
  if config.sampler.guidance < 0:
    raise UserError(f"sampler.guidance={config.sampler.guidance} must be >= 0 (0 = no guidance)")
  if config.sampler.guidance and not config.model.class_conditional:
    raise UserError(f"sampler.guidance={config.sampler.guidance} needs a class-conditional model "
                    "(model.class_conditional=True, trained with label dropout)")
  model.objective.check_config(config)  # its own keys, and what it makes of the sampler's
  _check_sampler(config, shape.length)
  if config.eval.suite == "samples":  # each variant is the config with its sampler keys changed
    for variant in evals.samples.parse_variants(config.eval.samplers):
      changed = config.copy_and_resolve_references()
      changed.sampler.update(variant)
      try:
        _check_sampler(changed, shape.length)
      except UserError as error:
        raise UserError(f"eval.samplers item {evals.samples.variant_label(variant)}: {error}") from None
  evals.bound.bound_steps(config.eval.bound_steps)
  zero_shot_sets.parse_names(config.eval.zero_shot)
  if config.train.batch_size % config.train.grad_accum:
    raise UserError(f"train.grad_accum={config.train.grad_accum} must divide train.batch_size="
                    f"{config.train.batch_size} (each microbatch has batch_size / grad_accum sequences)")
  capacity = config.train.logits_capacity
  if capacity != -1 and not 0.0 < capacity <= 1.0:
    raise UserError(f"train.logits_capacity={capacity}: use -1 (automatic) or a share of positions in (0, 1]")
  train = config.train
  if train.learning_rate <= 0:
    raise UserError(f"train.learning_rate={train.learning_rate} must be > 0 (a negative rate trains uphill)")
  if train.warmup_steps < 0:
    raise UserError(f"train.warmup_steps={train.warmup_steps} must be >= 0 (0 = no warm-up)")
  if train.weight_decay < 0:
    raise UserError(f"train.weight_decay={train.weight_decay} must be >= 0 (0 = none)")
  for name in ("b1", "b2"):
    if not 0.0 <= train[name] < 1.0:
      raise UserError(f"train.{name}={train[name]} must be in [0, 1) (Adam's moment decay; defaults 0.9 and 0.99)")
  if train.grad_clip < 0:
    raise UserError(f"train.grad_clip={train.grad_clip} must be >= 0 (the largest global gradient norm; 0 = no clipping)")
  if not 0.0 <= config.train.ema_decay < 1.0:
    raise UserError(f"train.ema_decay={config.train.ema_decay} must be in [0, 1)")
  profiling.parse_window(train.profile_steps, train.num_steps)
  wandb_log.check(config.wandb)
  return shape


def _check_sampler(config, length: int) -> None:
  """The sampler's keys (samplers.check_config: shared ones and each chosen sampler's), and which cache applies
  to which model."""
  samplers.check_config(config, length)
  cache, bd3 = config.sampler.kv_cache, config.objective == "bd3"
  if bd3 and cache in samplers.parallel.CACHES:
    raise UserError(f"sampler.kv_cache={cache!r}: objective='bd3' keeps an exact cache of its finished blocks; use "
                    "sampler.kv_cache='exact' (or 'none')")
  if not bd3 and cache == "exact":
    raise UserError("sampler.kv_cache='exact' is block diffusion's (objective='bd3'); a bidirectional model's cache "
                    "is approximate: sampler.name='parallel' with sampler.kv_cache='prefix' or 'dual'")
  if cache in samplers.parallel.CACHES and config.sampler.name != "parallel":
    raise UserError(f"sampler.kv_cache={cache!r} caches block by block for sampler.name='parallel' (this config: "
                    f"{config.sampler.name!r}); set sampler.name='parallel' or sampler.kv_cache='none'")
  if cache in samplers.parallel.CACHES and config.model.backbone != "transformer":
    raise UserError(f"sampler.kv_cache={cache!r} needs model.backbone='transformer' (a cached pass over keys and "
                    f"values); {config.model.backbone!r} has none: use sampler.kv_cache='none'")


def check_against_devices(config, mode: str, mesh=None) -> None:
  """Batch sizes against the mesh (default: config.mesh on the visible devices), before data or compilation.

  Batch rows are split over the mesh.data x mesh.fsdp devices of every process (sharding.BATCH_AXES);
  a size they do not divide would fail only at the first step or evaluation. Samples are replicated,
  so sampler.num_samples may be any count, and so may a microbatch (train.grad_accum): XLA reshards it.
  """
  keys = {"train": ("train.batch_size", "eval.batch_size"),  # training evaluates the bound too
          "eval": ("eval.batch_size",) if config.eval.suite in ("bound", "zero_shot") else ()}.get(mode, ())
  if not keys:
    return
  mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
  shards = math.prod(mesh.shape[axis] for axis in sharding.BATCH_AXES)
  for key in keys:
    group, name = key.split(".")
    size = config[group][name]
    if size % shards:
      multiples = [m for m in (size // shards * shards, (size // shards + 1) * shards) if m > 0]
      raise UserError(f"{key}={size} does not split over the mesh's {shards} data-parallel devices (mesh.data x "
                      f"mesh.fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']}, {jax.process_count()} process(es)): "
                      f"use a multiple of {shards} such as {' or '.join(map(str, multiples))} "
                      f"(--config.{key}={multiples[-1]}), or a config.mesh whose mesh.data x mesh.fsdp divides {size}")


def differences(saved: dict, config, reference=None) -> dict:
  """{key: (value in the workdir, value now)} for every key outside RESUMABLE_CHANGES that differs.

  A key the saved config lacks (added to configs/base.py since) counts as its default.
  """
  new = flatten(config.to_dict())
  old = {**(flatten(reference) if reference is not None else {}), **flatten(migrate(saved))}
  return {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
          if old.get(key) != new.get(key) and not key.startswith(RESUMABLE_CHANGES)}


def check_resumable(saved: dict, config, workdir, reference=None, allowed=()) -> None:
  """Refuses to continue a workdir whose run was made with a config that changes its meaning
  (keys in `allowed` may differ: the caller checks those)."""
  changed = {key: values for key, values in differences(saved, config, reference).items() if key not in allowed}
  if changed:
    diffs = "; ".join(f"{key}: {old!r} in the workdir, {new!r} now" for key, (old, new) in changed.items())
    raise UserError(f"workdir {workdir} holds a run with a different config ({diffs}). Use a new --workdir, "
                    f"or pass the workdir's values (they are in {workdir}/config.json)")
