"""One rule for finding every kind of part, and where a part's own config keys live.

A part (a backbone, objective, sampler, data source, tokenizer, eval suite, run mode) is chosen by name: a name in
its kind's table of built-in parts, or a dotted path to a module outside the package (`--model.backbone=mypkg.net`),
imported when chosen. So a researcher plugs in a part without editing md4_jax (docs/design.md, "Adding a part").

A part may own a config group, declared next to its code: `config_group() -> ml_collections.ConfigDict` (its keys
and defaults, each line `group.KEY = DEFAULT  # what it does` so `launch.py --help` can show it) and
`check_config(config)` (its value checks: ValueError or UserError naming the key). The group lives under its
kind's root at the part's short name (the last part of a dotted path): model.transformer.*, diffusion.bd3.*,
sampler.parallel.*, data.tokens.*. A key there applies exactly when that part is chosen (config_scope), and a
module outside the package is listed in `config.plugins` so configs/base.py adds its group.

Light on purpose (no jax): launch.py's --help and config files import it.
"""

import dataclasses
import importlib

from md4_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Kind:
  key: str  # the config key that chooses the part ("model.backbone")
  root: str  # the group its parts' own groups live under ("model" -> model.<name>.*); "" = its parts have none
  needs: tuple = ()  # what a module outside md4_jax must define to be this kind of part
  how: str = ""  # ... said the way the error message says it


KINDS = {
    "backbone": Kind("model.backbone", "model", ("build",), "build(config, modality, requirements) -> Backbone"),
    "objective": Kind("objective", "diffusion", ("OBJECTIVE",),
                      "OBJECTIVE = <a subclass of objectives.base.Objective>"),
    "sampler": Kind("sampler.name", "sampler"),  # its SAMPLERS entry is checked where it is run (samplers.run_of)
    "source": Kind("data.source", "data"),  # its MODALITY, load and modality: sources.Source.of_module
    "tokenizer": Kind("data.tokenizer", "", ("TOKENIZER",), "TOKENIZER = <a class like tokenizers.CharTokenizer>"),
    "suite": Kind("eval.suite", "", ("load", "run"), "load(config, workdir, modality) and run(context)"),
    "mode": Kind("--mode", "", ("run",), "run(config, workdir)")}


ROOTS = tuple(kind.root for kind in KINDS.values() if kind.root)  # every group under these is a part's own


def short_name(name: str) -> str:
  """The name a part's config group has: "mypkg.nets.toy" -> "toy"; a built-in name is its own."""
  return name.rpartition(".")[2]


def is_module_path(name: str) -> bool:
  return "." in name


def import_part(name: str, key: str):
  """The module at dotted path `name` (a part outside md4_jax); UserError naming `key` when it cannot be imported."""
  try:
    return importlib.import_module(name)
  except ImportError as error:
    raise UserError(f"{key}={name!r}: cannot import the module {name!r} ({error}); put its package on PYTHONPATH "
                    "or install it") from None


def find(kind: str, name: str, builtin: dict):
  """The part `name` of `kind`: builtin[name], or the module at a dotted path (which must define what its kind
  needs). UserError naming the choices, or what the module lacks."""
  if name in builtin:
    return builtin[name]
  spec = KINDS[kind]
  if not is_module_path(name):
    raise UserError(f"{spec.key}={name!r} is not known; choose one of {tuple(builtin)}, or a module path outside "
                    "md4_jax (mypkg.mymodule; docs/design.md, 'Adding a part')")
  module = import_part(name, spec.key)
  missing = [attribute for attribute in spec.needs if not hasattr(module, attribute)]
  if missing:
    raise UserError(f"{spec.key}={name!r}: the module lacks {', '.join(missing)}; it must define {spec.how} "
                    "(docs/design.md, 'Adding a part')")
  return module


def find_chosen(config, tables: dict) -> dict:
  """{kind: the part config chooses} for each kind in `tables` ({kind: its built-in table}), found once per run
  (run/config_check.py) and handed down."""
  return {kind: find(kind, value_at(config, KINDS[kind].key), builtin) for kind, builtin in tables.items()}


def config_group(part):
  """The part's own config group (a fresh ConfigDict), or None when it has no keys."""
  make = getattr(part, "config_group", None)
  return make() if make is not None else None


def check_config(part, config) -> None:
  """Runs the part's own value checks, if it has any; a ValueError becomes a UserError."""
  check = getattr(part, "check_config", None)
  if check is None:
    return
  try:
    check(config)
  except ValueError as error:
    raise UserError(f"bad config value: {error}") from None


def value_at(config, key: str):
  """config["a"]["b"] for key "a.b"."""
  for part in key.split("."):
    config = config[part]
  return config


def named(config) -> dict:
  """{kind: the names its choosing keys hold} for the kinds whose parts have groups (a sampler: sampler.name and
  semi_ar's inner sampler); no module is imported."""
  found = {kind: [value_at(config, spec.key)] for kind, spec in KINDS.items() if spec.root}
  found["sampler"].append(config.sampler.semi_ar.inner)
  return found


def module_paths(config) -> dict:
  """{short name: module path} of the parts outside md4_jax the config names (in `plugins`, or chosen)."""
  names = [*config.plugins.split(","), *(name for names in named(config).values() for name in names)]
  return {short_name(name.strip()): name.strip() for name in names if is_module_path(name.strip())}


def plugins(config) -> dict:
  """{module path: kind} of the parts outside md4_jax a config names: those in config.plugins (by their KIND) and
  any chosen by a module path. UserError for a listed module whose KIND is not a kind with config groups."""
  found = {}
  for name in (name.strip() for name in config.plugins.split(",")):
    if name:
      kind = getattr(import_part(name, "plugins"), "KIND", None)
      if kind not in KINDS or not KINDS[kind].root:
        raise UserError(f"plugins: module {name!r} must set KIND to one of "
                        f"{tuple(k for k in KINDS if KINDS[k].root)} (the kind of part it is)")
      found[name] = kind
  for kind, names in named(config).items():
    found.update({name: kind for name in names if is_module_path(name) and name not in found})
  return found


def add_plugin_groups(config, also=None) -> None:
  """Adds to `config` (and to `also`, a schema) the config group of each part outside md4_jax that `config` names
  (`plugins`), at its defaults, under its kind's root; a group already there (a config file's values) is kept."""
  for name, kind in plugins(config).items():
    group = config_group(import_part(name, KINDS[kind].key))
    if group is None:
      continue
    short = short_name(name)
    for target in (config,) if also is None else (config, also):
      parent = value_at(target, KINDS[kind].root)
      if short not in parent:
        with parent.unlocked():  # a config from the command line is locked against new keys
          parent[short] = group.copy_and_resolve_references()
      elif set(parent[short]) != set(group):
        raise UserError(f"{name!r}: its keys would be {KINDS[kind].root}.{short}.*, a group that holds other keys "
                        f"({sorted(parent[short])}); rename the module")
