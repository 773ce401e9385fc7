"""Config validation before any work: unknown keys, wrong types, bad values, incompatible workdirs.

Every problem is a `UserError` that names the key and the fix.
"""

import math

import jax

from md4_jax import evals, models, objectives, samplers
from md4_jax.core import schedules
from md4_jax.data import image_sources, modality, sources, tokenizers, zero_shot_sets
from md4_jax.engine import profiling, sharding, wandb_log
from md4_jax.engine.saved_config import RENAMED, RUN_RECORD, migrate  # noqa: F401 (this module's interface)
from md4_jax.errors import UserError
from md4_jax.run import config_scope
from md4_jax.run.config_keys import flatten  # {"a.b": value}; the light module owns it (launch.py --help needs it)

# Keys a resumed run may change: they do not alter what the checkpoint means.
# grad_accum changes only which random numbers are drawn; remat, attention, scan_unroll, logits_capacity and
# steps_per_call change only cost.
# Data locations may move between machines (what is read there is checked: prepared meta, BPE checksum).
RESUMABLE_CHANGES = ("train.num_steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.profile_steps", "train.grad_accum", "train.logits_capacity", "model.remat",
                     "model.attention", "model.scan_unroll", "train.steps_per_call",
                     "data.dir", "data.manual_dir", "data.tokenizer_path", "eval.", "sampler.", "mesh.", "wandb.")
POSITIVE_INTS = ("data.seq_len", "model.num_layers", "model.width", "model.num_heads", "train.num_steps",
                 "train.batch_size", "train.log_every", "train.eval_every", "train.checkpoint_every",
                 "train.keep_checkpoints", "train.grad_accum", "train.steps_per_call", "eval.batch_size",
                 "eval.time_samples", "sampler.steps",
                 "sampler.num_samples", "sampler.batch_size", "model.unet.channels", "model.uvit.channels", "model.uvit.patch_size",
                 "model.uvit.width", "model.uvit.num_layers", "model.uvit.num_heads")


def _type_ok(value, default) -> bool:
  if isinstance(default, bool) or isinstance(value, bool):
    return type(value) is type(default)
  if isinstance(default, float):
    return isinstance(value, (int, float))
  return isinstance(value, type(default))


def check_keys(config, reference) -> None:
  """Every key of `config` exists in `reference` (configs/base.py) with a value of the same type."""
  flat, known = flatten(config), flatten(reference)
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


def check_scope(config, reference) -> None:
  """No key is set away from its default (`reference`: configs/base.py) where it has no effect (config_scope).
  After check_values: a bad value is named as such even where its key would not apply."""
  config_scope.check_applicable(flatten(config), config, flatten(reference))


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


KV_CACHES = ("none", "exact", *samplers.parallel.CACHES)
# The sampler keys with a fixed set of values: checked for the config and for each eval.samplers variant.
SAMPLER_CHOICES = {"sampler.name": samplers.NAMES, "sampler.inner": samplers.INNER, "sampler.params": ("ema", "raw"),
                   "sampler.kv_cache": KV_CACHES, "sampler.fallback": samplers.parallel.FALLBACKS}


def _check_choices(flat: dict, choices: dict) -> None:
  for key, allowed in choices.items():
    if flat[key] not in allowed:
      raise UserError(f"config key {key!r} = {flat[key]!r}; choose one of {allowed}")


def check_values(config) -> None:
  """Values each key accepts, checked up front so no run dies after minutes of work."""
  flat = flatten(config)
  for key in POSITIVE_INTS:
    if flat[key] <= 0:
      raise UserError(f"config key {key!r} = {flat[key]} must be positive")
  if config.eval.timesteps < -1:
    raise UserError(f"eval.timesteps={config.eval.timesteps}: use -1 (as trained), 0 (continuous) or T > 0 steps")
  if config.diffusion.timesteps < 0:
    raise UserError(f"diffusion.timesteps={config.diffusion.timesteps}: use 0 (continuous) or T > 0 steps")
  source = sources.get(config.data.source)
  _check_choices(flat, {"objective": objectives.NAMES, "model.backbone": models.BACKBONES,
                        "data.tokenizer": tokenizers.NAMES, "eval.split": ("validation", "test"), **SAMPLER_CHOICES,
                        "eval.params": ("ema", "raw"), "eval.suite": evals.NAMES})
  # The backbone's own checks, on the source's shape (text: any vocabulary; images: known without data).
  shape = image_sources.nominal_modality(config.data) if source.kind == "image" else modality.Text(2, config.data.seq_len)
  try:
    schedules.get_schedule(config.diffusion.schedule)
    samplers.time_grid(1, config.sampler.grid)
    objectives.build_model(config, shape)
  except ValueError as error:
    raise UserError(f"bad config value: {error}") from error
  if not 0.0 <= config.model.label_dropout < 1.0:
    raise UserError(f"model.label_dropout={config.model.label_dropout} must be in [0, 1)")
  if config.sampler.guidance < 0:
    raise UserError(f"sampler.guidance={config.sampler.guidance} must be >= 0 (0 = no guidance)")
  if config.sampler.guidance and not config.model.class_conditional:
    raise UserError(f"sampler.guidance={config.sampler.guidance} needs a class-conditional model "
                    "(model.class_conditional=True, trained with label dropout)")
  objectives.get(config.objective).check_config(config)  # its own keys, and what it makes of the sampler's
  _check_sampler(config.sampler, shape.length)
  _check_parallel(config, shape.length)
  if config.eval.suite == "samples":  # each variant is the config with its sampler keys changed
    for variant in evals.samples.parse_variants(config.eval.samplers):
      _check_tokens_per_call("exact", variant.get("tokens_per_call", 1), shape.length, "eval.samplers item exact:")
      changed = config.copy_and_resolve_references()
      changed.sampler.update(variant)
      try:
        _check_choices(flatten(changed), SAMPLER_CHOICES)
        _check_parallel(changed, shape.length)
      except UserError as error:
        raise UserError(f"eval.samplers item {':'.join(map(str, variant.values()))}: {error}") from None
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


def _check_sampler(sampler, seq_len: int) -> None:
  if sampler.temperature < 0:
    raise UserError(f"sampler.temperature={sampler.temperature} must be >= 0 (0 = argmax)")
  if sampler.top_k < 0:
    raise UserError(f"sampler.top_k={sampler.top_k} must be >= 0 (0 = off)")
  if not 0.0 < sampler.top_p <= 1.0:
    raise UserError(f"sampler.top_p={sampler.top_p} must be in (0, 1] (1 = off)")
  if sampler.tokens_per_call < 1:
    raise UserError(f"sampler.tokens_per_call={sampler.tokens_per_call} must be >= 1")
  if sampler.choice_temperature < 0:
    raise UserError(f"sampler.choice_temperature={sampler.choice_temperature} must be >= 0")
  if sampler.name == "semi_ar":
    try:
      samplers.semi_ar_blocks(sampler.block_length, sampler.steps, seq_len)
    except ValueError as error:
      raise UserError(str(error)) from None
  _check_tokens_per_call(sampler.inner if sampler.name == "semi_ar" else sampler.name, sampler.tokens_per_call,
                         seq_len, "sampler.tokens_per_call=")


def _check_parallel(config, seq_len: int) -> None:
  """The parallel sampler's keys, and which cache applies to which model."""
  sampler, bd3 = config.sampler, config.objective == "bd3"
  cache = sampler.kv_cache
  if not 0.0 < sampler.threshold <= 1.0:
    raise UserError(f"sampler.threshold={sampler.threshold} must be in (0, 1] (1 = one token per call)")
  if sampler.cache_refresh < 0:
    raise UserError(f"sampler.cache_refresh={sampler.cache_refresh} must be >= 0 (0 = refresh at each block's start)")
  if bd3 and cache in samplers.parallel.CACHES:
    raise UserError(f"sampler.kv_cache={cache!r}: objective='bd3' keeps an exact cache of its finished blocks; use "
                    "sampler.kv_cache='exact' (or 'none')")
  if not bd3 and cache == "exact":
    raise UserError("sampler.kv_cache='exact' is block diffusion's (objective='bd3'); a bidirectional model's cache "
                    "is approximate: sampler.name='parallel' with sampler.kv_cache='prefix' or 'dual'")
  if cache in samplers.parallel.CACHES and sampler.name != "parallel":
    raise UserError(f"sampler.kv_cache={cache!r} caches block by block for sampler.name='parallel' (this config: "
                    f"{sampler.name!r}); set sampler.name='parallel' or sampler.kv_cache='none'")
  if cache in samplers.parallel.CACHES and config.model.backbone != "transformer":
    raise UserError(f"sampler.kv_cache={cache!r} needs model.backbone='transformer' (a cached pass over keys and "
                    f"values); {config.model.backbone!r} has none: use sampler.kv_cache='none'")
  if samplers.parallel.uses_blocks(sampler):
    length = config.diffusion.block_size if bd3 else seq_len  # bd3: parallel runs inside each of its blocks
    if sampler.block_length < 0 or (sampler.block_length and length % sampler.block_length):
      raise UserError(f"sampler.block_length={sampler.block_length} must divide {length} ("
                      f"{'diffusion.block_size' if bd3 else 'data.seq_len'}) for sampler.name='parallel'; "
                      "0 = one block")


def _check_tokens_per_call(sampler_name: str, tokens_per_call: int, seq_len: int, what: str) -> None:
  """The exact sampler unmasks tokens_per_call positions per network call; more than a sample has fails
  (jax.lax.top_k) at the first samples, minutes into a run."""
  if sampler_name == "exact" and tokens_per_call > seq_len:
    raise UserError(f"{what}{tokens_per_call} unmasks more positions per call than the {seq_len} of a sample "
                    f"(data.seq_len; H x W x C for images): use 1 to {seq_len}")


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
  flat = flatten(config)
  for key in keys:
    size = flat[key]
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
