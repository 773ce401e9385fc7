"""model.init_from: where a new run's weights start. A Hugging Face model directory (interop/), or another md4-jax
run's workdir at model.init_step (-1: its newest checkpoint): so an autoregressive run is adapted into MD4 or block
diffusion by training it under that objective (the adaptation papers' path, docs/method.md).

Either way the source fixes the network's shape keys (a key the config sets otherwise is refused in one line), and
the new run starts at step 0 with a fresh optimizer: its params and EMA are the source's weights; what the source
lacks (GenMD4's schedule) keeps its initial value.
"""

import json
import os

import jax
import ml_collections
from etils import epath

from md4_jax import objectives, parts
from md4_jax.data import modality as modalities
from md4_jax.engine import saved_config
from md4_jax.engine.checkpoints import restore_state
from md4_jax.engine.experiment import Experiment
from md4_jax.errors import UserError
from md4_jax.interop import hf_config, hf_weights

# A transformer's keys that do not change its parameters (scanned or not, the checkpoint layout is the same).
FREE_KEYS = ("scan_layers", "scan_unroll")


def is_workdir(directory: str) -> bool:
  """Whether `directory` is an md4-jax run (a config.json without a model_type, and checkpoints/)."""
  path = epath.Path(directory)
  return (path / "checkpoints").is_dir() and "model_type" not in _read_json(path / "config.json")


def apply(config, reference, directory: str) -> None:
  """Sets the keys the source fixes (validation, before any other check); `reference`: configs/base.py's. A local
  path's "~" is expanded (in the config, so the saved config names the directory read)."""
  if "://" not in directory:
    directory = config.model.init_from = os.path.expanduser(directory)
  if not is_workdir(directory):
    if config.model.init_step != -1:
      raise UserError(f"model.init_step={config.model.init_step} picks a checkpoint of an md4-jax workdir; "
                      f"model.init_from={directory!r} is a Hugging Face model directory: remove model.init_step")
    hf_config.apply(config, reference, directory)
    return
  source = source_config(directory, config)
  backbone = parts.short_name(source.model.backbone)
  fixed = {f"model.{backbone}.{key}": value for key, value in source.model[backbone].items() if key not in FREE_KEYS}
  fixed.update({"model.backbone": source.model.backbone, "model.time_conditioning": time_input(source)})
  hf_config.fix_keys(config, reference, fixed, directory)


def source_config(directory: str, config) -> ml_collections.ConfigDict:
  """The source run's config (its config.json in today's key names; keys it predates from `config`)."""
  return saved_config.as_config(_read_json(epath.Path(directory) / "config.json"), config)


def time_input(config) -> bool:
  """Whether config's network reads the time (its objective may rule it out: AR and BD3 do)."""
  requirements = objectives.get(config.get("objective", "md4")).network_requirements
  return bool(config.model.time_conditioning and requirements.get("time_conditioning", True))


def initial_state(experiment: Experiment, directory: str, step: int):
  """(the new run's state at step 0 with the source's weights as its params and EMA, the source's step or None)."""
  if not is_workdir(directory):
    return experiment.init_state_from(directory), None
  path = epath.Path(directory)
  source = source_config(directory, experiment.config)
  source_modality = modalities.load(path, source.data.seq_len)
  if not modalities.same_token_ids(source_modality, experiment.modality):
    described = f"{source_modality.kind}, {source_modality.vocab_size} ids" if source_modality else "none saved"
    raise UserError(f"model.init_from={directory!r} was trained on other token ids ({described}; this run: "
                    f"{experiment.modality.kind}, {experiment.modality.vocab_size} ids): train on the same data and "
                    "tokenizer")
  source_experiment = Experiment(source, source_modality, experiment.mesh)
  state = restore_state(path / "checkpoints", None if step < 0 else step, source_experiment.abstract_state,
                        source_experiment.state_summary)
  fresh = experiment.init_state(experiment.base_key)
  return experiment.state_with_params(fresh, matched(state["ema_params"], fresh["params"], directory)), int(state["step"])


def matched(source_params, target_params, directory: str):
  """target_params with each leaf replaced by the source's leaf of the same name (GenMD4's "backbone" prefix
  ignored); one the source lacks is kept. UserError for a shape that differs, or no name in common."""
  by_name = {_backbone_names(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(source_params)}
  found = []

  def take(path, leaf):
    names = _backbone_names(path)
    if names not in by_name:
      return leaf
    value = by_name[names]
    if value.shape != leaf.shape:
      raise UserError(f"model.init_from={directory!r}: {'/'.join(map(str, names))} has the shape {value.shape} "
                      f"there and {leaf.shape} in this run")
    found.append(names)
    return value.astype(leaf.dtype)

  taken = jax.tree_util.tree_map_with_path(take, target_params)
  if not found:
    raise UserError(f"model.init_from={directory!r}: none of its parameters is one of this run's (another "
                    "backbone?)")
  return taken


def _backbone_names(path) -> tuple:
  names = hf_weights.param_names(path)
  return names[1:] if names[:1] == ("backbone",) else names


def _read_json(path: epath.Path) -> dict:
  if not path.exists():
    raise UserError(f"{path.parent} has no config.json: model.init_from must name a Hugging Face model directory "
                    "(config.json + model.safetensors) or an md4-jax workdir")
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise UserError(f"cannot read {path} ({error}); model.init_from must name a Hugging Face model directory or an "
                    "md4-jax workdir") from None
