"""A run's parameters written for other code (`--mode export`): safetensors under our own names, or a Hugging Face
model directory that `transformers` loads as the matching causal LM.

"safetensors": `model.safetensors` (every parameter under its path in the model, "blocks.0.attention.query.kernel",
float32) and `config.json` (the run's config). "hf": `config.json` (a LlamaConfig, Qwen2Config or Qwen3Config),
`model.safetensors` in Hugging Face names, and the tokenizer files when the run's tokenizer is a Hugging Face one.
Only an autoregressive transformer exports as "hf": its attention is causal and time-independent, which is what a
causal LM computes; any other is refused naming what differs. The mask token's embedding row, which a causal LM
does not have, travels as one extra tensor (`hf_weights.MASK_ROW`, ignored by transformers), so importing the
export gives the run's parameters bitwise.
"""

import json

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from md4_jax.errors import UserError
from md4_jax.interop import hf_config, hf_weights
from md4_jax.storage import tensor_files

FORMATS = ("safetensors", "hf")


def _host(leaf) -> np.ndarray:
  """A parameter's whole value on this host (gathered across processes when it is sharded over several)."""
  if not leaf.is_fully_addressable:
    leaf = multihost_utils.process_allgather(leaf, tiled=True)
  return np.asarray(jax.device_get(leaf), np.float32)


def our_names(params) -> dict:
  """{"blocks.0.attention.query.kernel": leaf} for every parameter."""
  return {".".join(map(str, hf_weights.param_names(path))): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def write_safetensors(params, config, directory) -> None:
  """Our names, float32, beside the run's config.json."""
  named = our_names(params)
  directory = epath.Path(directory)
  if jax.process_index() == 0:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
  tensors = ((name, _host(leaf)) for name, leaf in named.items())  # every process gathers; process 0 writes
  shapes = {name: (tuple(leaf.shape), np.float32) for name, leaf in named.items()}
  if jax.process_index() == 0:
    tensor_files.write(directory / tensor_files.SINGLE, tensors, shapes, {"format": "md4_jax"})
  else:
    for _ in tensors:
      pass


def hf_model_config(config, vocab_size: int, eos_id) -> dict:
  """The transformers config.json of this run's network; UserError naming what a causal LM cannot be."""
  keys, model = config.model.transformer, config.model
  differences = [
      (config.objective != "ar", f"objective={config.objective!r} trains a bidirectional (or block) network; a "
       "causal LM attends left to right (only objective='ar' exports as hf)"),
      (model.backbone != "transformer", f"model.backbone={model.backbone!r} is not the transformer"),
      (keys.positions != "rope", "model.transformer.positions='learned': the Llama / Qwen families use rotary "
       "positions"),
  ]
  for differs, why in differences:
    if differs:
      raise UserError(f"--format hf: {why}; export with --format safetensors")
  heads = keys.num_heads
  model_type = "qwen3" if keys.qk_norm else "qwen2" if keys.qkv_bias else "llama"
  hf = {"model_type": model_type, "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                                                     "qwen3": "Qwen3ForCausalLM"}[model_type]],
        "vocab_size": vocab_size, "hidden_size": keys.width, "intermediate_size": keys.mlp_hidden or
        int(keys.width * keys.mlp_ratio), "num_hidden_layers": keys.num_layers, "num_attention_heads": heads,
        "num_key_value_heads": keys.num_kv_heads or heads, "head_dim": keys.head_dim or keys.width // heads,
        "hidden_act": "silu", "max_position_embeddings": config.data.seq_len, "rms_norm_eps": keys.norm_eps,
        "rope_theta": keys.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": keys.rope_theta},
        "tie_word_embeddings": keys.tie_embeddings, "attention_bias": False, "torch_dtype": "float32",
        "eos_token_id": eos_id, "bos_token_id": None}
  if keys.qkv_bias and keys.qk_norm:
    raise UserError("--format hf: q/k/v biases with q/k norms match no Hugging Face family; export with --format "
                    "safetensors")
  hf_config.check_supported(hf, "the export")  # what the import refuses, the export must not write
  return hf


def write_hf(params, config, tokenizer, directory) -> None:
  """A Hugging Face model directory: config.json, model.safetensors and, for an hf tokenizer, its files."""
  hf = hf_model_config(config, tokenizer.vocab_size, tokenizer.eos_id)
  scanned = config.model.transformer.scan_layers
  tensors = {}  # Hugging Face name -> (our leaf, rule, layer index or None)
  mask_leaf = None
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    found = hf_weights.where(hf_weights.param_names(path), scanned)
    if found is None:
      raise UserError(f"--format hf: parameter {jax.tree_util.keystr(path)} has no Hugging Face counterpart")
    rule, layer = found
    if rule.kind == "embedding":
      mask_leaf = leaf
    for name, index in hf_weights.tensor_names(rule, layer, leaf.shape):
      tensors[name] = (leaf, rule, index)
  directory = epath.Path(directory)

  def values():
    for name, (leaf, rule, index) in tensors.items():
      value = _host(leaf)
      yield name, hf_weights.to_hf(rule, value if index is None else value[index])
    yield hf_weights.MASK_ROW, _host(mask_leaf)[-1:]

  shapes = {name: (_hf_shape(leaf, rule, index), np.float32) for name, (leaf, rule, index) in tensors.items()}
  shapes[hf_weights.MASK_ROW] = ((1, mask_leaf.shape[1]), np.float32)
  if jax.process_index() != 0:
    for _ in values():
      pass
    return
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(hf, indent=2))
  tensor_files.write(directory / tensor_files.SINGLE, values(), shapes, {"format": "pt"})
  if getattr(tokenizer, "name", None) == "hf":
    (directory / "tokenizer.json").write_text(tokenizer.text)
    eos = tokenizer._tokenizer.id_to_token(tokenizer.eos_id) if tokenizer.eos_id is not None else None
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos}, indent=2))


def _hf_shape(leaf, rule, index) -> tuple:
  """The Hugging Face shape of one layer's (or a global) parameter, from our leaf's shape."""
  return hf_weights.hf_shape(rule, tuple(leaf.shape[1:]) if index is not None else tuple(leaf.shape))
