"""Config sweeps: a config module may define `sweep(add)`; each `add(**overrides)` is one run.

Overrides use dotted keys, written `add(**{"train.learning_rate": 1e-3})` or
`add(train__learning_rate=1e-3)`. Each run's name is derived from its overrides
(`train.learning_rate=0.001,model.transformer.width=256`) and it runs in `WORKDIR/<name>`.
"""

import copy
import importlib.util

from etils import epath

from md4_jax.errors import UserError
from md4_jax.run import config_check
from md4_jax.storage import paths as storage


def _load_sweep_function(config_path: str):
  spec = importlib.util.spec_from_file_location("md4_sweep_config", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  sweep = getattr(module, "sweep", None)
  if sweep is None:
    raise UserError(f"{config_path} defines no sweep(add) function, so --sweep/--sweep_index have nothing to run; "
                    "add one (see configs/quickstart_sweep.py)")
  return sweep


def variant_name(overrides: dict) -> str:
  """'a.b=1,c.d=x': the overrides in the order given, safe as one directory name."""
  text = ",".join(f"{key}={value}" for key, value in overrides.items())
  return text.replace("/", "_").replace(" ", "") or "base"


def variants(config_path: str, config) -> list[tuple[str, object]]:
  """[(name, config)] for each `add(...)` of the config module's sweep, applied on top of `config`."""
  requested = []
  _load_sweep_function(config_path)(lambda **overrides: requested.append(
      {key.replace("__", "."): value for key, value in overrides.items()}))
  if not requested:
    raise UserError(f"the sweep in {config_path} adds no runs")
  known = config_check.flatten(config)
  result = []
  for overrides in requested:
    name = variant_name(overrides)
    variant = copy.deepcopy(config)
    for key, value in overrides.items():
      if key not in known:
        raise UserError(f"sweep run {name!r} overrides unknown config key {key!r} (keys: configs/base.py)")
      *groups, leaf = key.split(".")
      node = variant
      for group in groups:
        node = node[group]
      node[leaf] = value
    result.append((name, variant))
  names = [name for name, _ in result]
  if len(set(names)) != len(names):
    raise UserError(f"the sweep in {config_path} adds the same overrides twice: {names}")
  return result


def run_directory(workdir: str, name: str) -> epath.Path:
  return storage.path(workdir) / name
