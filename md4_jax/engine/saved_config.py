"""A run's saved config.json read as today's config: keys renamed since (refused in new configs, migrated in
saved workdirs) and the run record it carries beside the config."""

import json

import ml_collections

_OWN_GROUP = "the {part}'s keys are its own group now (same values)"

# Keys that were renamed: old -> (new, what to write instead). Saved workdirs are migrated (`migrate`);
# a config or command line that still uses the old name is refused with the replacement.
RENAMED = {
    "model.kind": ("objective", "set config.objective (or --config.objective=ar); same values: 'md4' | 'ar'"),
    **{f"model.{key}": (f"model.transformer.{key}", _OWN_GROUP.format(part="transformer backbone"))
       for key in ("num_layers", "width", "num_heads", "mlp_ratio", "mlp_hidden", "cond_dim", "positions",
                   "scan_layers", "scan_unroll")},
    **{f"diffusion.{key}": (f"diffusion.bd3.{key}", _OWN_GROUP.format(part="bd3 objective"))
       for key in ("block_size", "clip_low", "clip_high")},
    **{f"sampler.{key}": (f"sampler.parallel.{key}", _OWN_GROUP.format(part="parallel sampler"))
       for key in ("threshold", "fallback", "cache_refresh")},
    "sampler.tokens_per_call": ("sampler.exact.tokens_per_call", _OWN_GROUP.format(part="exact sampler")),
    "sampler.choice_temperature": ("sampler.confidence.choice_temperature",
                                   _OWN_GROUP.format(part="confidence sampler")),
    "sampler.inner": ("sampler.semi_ar.inner", _OWN_GROUP.format(part="semi_ar sampler")),
    **{f"data.{key}": (f"data.tokens.{key}", _OWN_GROUP.format(part="tokens source"))
       for key in ("vocab_size", "token_dtype")},
    "data.subset": ("data.<source>.subset", "fineweb_edu's and imagenet64's own key now: data.fineweb_edu.subset or "
                    "data.imagenet64.subset (same values)"),
}


RUN_RECORD = "_run"  # config.json's one key that is not config: the run's record (md4_jax/run/workdir.py)


def with_missing_keys(saved: dict, current: dict) -> dict:
  """saved (a migrated config.json) with every key it lacks taken from `current` (a config as a dict): a run saved
  before a key was added, read whole (the AR judge: its model keys are its own, newer sampler keys unused)."""
  merged = json.loads(json.dumps(current))
  for key, value in saved.items():
    both_groups = isinstance(value, dict) and isinstance(merged.get(key), dict)
    merged[key] = with_missing_keys(value, merged[key]) if both_groups else value
  return merged


def migrate(saved: dict) -> dict:
  """A workdir's config.json as a config in today's key names (RENAMED): a run from before a rename stays
  usable. The run record (RUN_RECORD) is left out."""
  saved = json.loads(json.dumps(saved))  # a copy
  saved.pop(RUN_RECORD, None)
  for old_key, (new_key, _) in RENAMED.items():
    group, _, name = old_key.rpartition(".")
    parent = saved.get(group, {}) if group else saved
    if name in parent:
      value = parent.pop(name)
      if "<source>" in new_key:  # a key of the chosen source's own group now; unset elsewhere (it had no effect there)
        if not value:
          continue
        new_key = new_key.replace("<source>", saved["data"]["source"])
      *path, last = new_key.split(".")
      target = saved
      for part in path:
        target = target.setdefault(part, {})
      target[last] = value
  return saved


def as_config(saved: dict, current) -> ml_collections.ConfigDict:
  """Another run's config.json (as read) as a config: migrated, with the keys it predates from `current` (a
  ConfigDict). The judge's, model.init_from's and the harness's reading of a workdir."""
  return ml_collections.ConfigDict(with_missing_keys(migrate(saved), current.to_dict()))
