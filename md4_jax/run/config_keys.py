"""The config keys as a user reads them: each key's default and comment, from the lines that define them.

configs/base.py defines the general keys and gathers each built-in part's group from its module's config_group()
(`config.model.transformer = transformer.config_group()  # ...`); every key has a comment on its line (a test
checks), and comment lines just above a key say more about it. This module reads those files' text (no import of
the package's heavy parts), so `launch.py --help=GROUP` answers in well under a second.
"""

import ast
import dataclasses
import pathlib
import re

import ml_collections

_KEY_LINE = re.compile(r"^\s*(?:config|group)\.([\w.]+)\s*=\s*(.+?)\s+#\s?(.*)$")
_COMMENT_LINE = re.compile(r"^\s*#\s?(.*)$")
_IMPORT_LINE = re.compile(r"^from (md4_jax[\w.]*) import ([\w, ]+)$")
_PART_GROUP = re.compile(r"^(\w+)\.config_group\(\)$")  # a line gathering a part's group
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1]  # md4_jax/


@dataclasses.dataclass(frozen=True)
class Key:
  name: str  # dotted, e.g. "train.num_steps"
  comment: str  # the comment on its line
  notes: tuple[str, ...]  # comment lines just above it
  is_group: bool  # a ConfigDict (its line defines a group)
  default: object = None  # the value on its line (None for a group)


def _module_files(lines: list[str]) -> dict:
  """{name imported from md4_jax: its file} for base.py's `from md4_jax.x import a, b` lines."""
  files = {}
  for line in lines:
    match = _IMPORT_LINE.match(line)
    if match:
      folder = _PACKAGE_DIR.joinpath(*match.group(1).split(".")[1:])
      for name in (name.strip() for name in match.group(2).split(",")):
        files[name] = folder / f"{name}.py"
  return files


def read(base_path: str, prefix: str = "") -> list[Key]:
  """The keys and groups of configs/base.py (or of a part module's config_group, its keys under `prefix`) in file
  order; a part's gathered group is followed by its keys, read from its module."""
  lines = open(base_path, encoding="utf-8").read().splitlines()
  modules = _module_files(lines)
  keys, notes = [], []
  for line in lines:
    comment, key = _COMMENT_LINE.match(line), _KEY_LINE.match(line)
    if key:
      name, value = prefix + key.group(1), key.group(2)
      part = _PART_GROUP.match(value)
      is_group = bool(part) or value.startswith("ml_collections.ConfigDict(")
      keys.append(Key(name, key.group(3).strip(), tuple(notes), is_group, None if is_group else ast.literal_eval(value)))
      if part and part.group(1) in modules:
        keys.extend(read(modules[part.group(1)], prefix=name + "."))
      notes = []
    elif comment:
      notes.append(comment.group(1).rstrip())
    else:
      notes = []
  return keys


def defaults(base_path: str) -> dict:
  """{"a.b": default} of every key, from the files' text (configs/base.py and the part modules it gathers)."""
  return {key.name: key.default for key in read(base_path) if not key.is_group}


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


def describe(topic: str, base_path: str, config=None, config_file: str | None = None) -> str:
  """The keys under `topic` ("train", "model.unet", "sampler.name", or "all"), each with its default, its
  comment and the notes above it; with `config` (a loaded --config file), its value where it differs.
  ValueError for a topic that names no key or group."""
  flat_defaults = defaults(base_path)
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
