"""A run's saved config.json read as today's config: keys renamed since (refused in new configs, migrated in
saved workdirs) and the run record it carries beside the config."""

import json

# Keys that were renamed: old -> (new, what to write instead). Saved workdirs are migrated (`migrate`);
# a config or command line that still uses the old name is refused with the replacement.
RENAMED = {"model.kind": ("objective", "set config.objective (or --config.objective=ar); same values: 'md4' | 'ar'")}


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
    if name in saved.get(group, {}):
      saved[new_key] = saved[group].pop(name)
  return saved
