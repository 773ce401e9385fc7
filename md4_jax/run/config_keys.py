"""The config keys as a user reads them: each key's default and comment, from configs/base.py's own lines.

configs/base.py is the one place defaults live, and every key there has a comment on its line (a test checks);
comment lines just above a key say more about it. This module reads that file's text (no import of the package's
heavy parts), so `launch.py --help=GROUP` answers in well under a second.
"""

import dataclasses
import re

import ml_collections

_KEY_LINE = re.compile(r"^\s*config\.([\w.]+)\s*=\s*(.+?)\s+#\s?(.*)$")
_COMMENT_LINE = re.compile(r"^\s*#\s?(.*)$")


@dataclasses.dataclass(frozen=True)
class Key:
  name: str  # dotted, e.g. "train.num_steps"
  comment: str  # the comment on its line
  notes: tuple[str, ...]  # comment lines just above it
  is_group: bool  # a ConfigDict (its line defines a group)


def read(base_path: str) -> list[Key]:
  """configs/base.py's keys and groups in file order."""
  keys, notes = [], []
  for line in open(base_path, encoding="utf-8").read().splitlines():
    comment, key = _COMMENT_LINE.match(line), _KEY_LINE.match(line)
    if key:
      is_group = key.group(2).startswith("ml_collections.ConfigDict(")
      keys.append(Key(key.group(1), key.group(3).strip(), tuple(notes), is_group))
      notes = []
    elif comment:
      notes.append(comment.group(1).rstrip())
    else:
      notes = []
  return keys


def flatten(config, prefix="") -> dict:
  """{"a.b": value} for every leaf of a (nested) ConfigDict or dict."""
  items = {}
  for key, value in config.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      items.update(flatten(value, f"{prefix}{key}."))
    else:
      items[f"{prefix}{key}"] = value
  return items


def groups_summary(base_path: str) -> str:
  """One line per top-level group, in configs/base.py's order: its name, how many keys, and its first keys."""
  groups = {}
  for key in read(base_path):
    if not key.is_group:
      group, _, name = key.name.rpartition(".")
      groups.setdefault(group.split(".")[0] or "(top level)", []).append(key.name.split(".", 1)[-1])
  lines = []
  for group, names in groups.items():
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    lines.append(f"  {group:12s} {len(names):3d} keys: {shown}")
  return "\n".join(lines)


def describe(topic: str, base_path: str, defaults, config=None, config_file: str | None = None) -> str:
  """The keys under `topic` ("train", "model.unet", "sampler.name", or "all"), each with its default, its
  comment and the notes above it; with `config` (a loaded --config file), its value where it differs.
  ValueError for a topic that names no key or group."""
  flat_defaults = flatten(defaults)
  flat_config = flatten(config) if config is not None else {}
  prefix = "" if topic in ("all", "*") else topic.strip(".")
  chosen = [key for key in read(base_path) if not prefix or key.name == prefix or key.name.startswith(prefix + ".")
            or (prefix in ("(top level)", "top") and "." not in key.name)]
  if not chosen:
    groups = sorted({name.split(".")[0] for name in flat_defaults if "." in name})
    raise ValueError(f"no config key or group {topic!r}; groups: {', '.join(groups)}, or 'all' (python launch.py "
                     "--help lists them)")
  lines = [f"Config keys under {topic!r}" + (f" (values from {config_file} where it differs)" if config_file else "")
           + " - set with --config.KEY=VALUE or --KEY=VALUE:", ""]
  for key in chosen:
    if key.is_group:
      lines.append(f"{key.name}.*: {key.comment}")
    else:
      default = flat_defaults.get(key.name)
      value = flat_config.get(key.name, default)
      lines.append(f"{key.name} = {value!r}" + (f" (default {default!r})" if value != default else ""))
      lines.append(f"      {key.comment}")
    lines.extend(f"      {note}" for note in key.notes)
  return "\n".join(lines)
