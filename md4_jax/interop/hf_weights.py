"""A Hugging Face Llama / Qwen checkpoint's tensors as this project's transformer parameters, and back.

Each parameter of ours has one tensor there (per layer), related by a transpose and a reshape: a linear layer's
weight is [out, in] there and our Dense kernel is [in..., out...] (the query's [D, heads, head_dim], the output
projection's [heads, head_dim, D]). Two differ in content: our embedding has one row more (the mask token, id V:
the mean of the vocabulary's rows, a neutral start for a model that has never seen it), and a scanned model
stacks each per-layer tensor along a leading `layers` axis. Rotary positions use the same half-split convention
on both sides, so no head dimension is permuted.

Loading reads one tensor at a time (storage/tensor_files.py) and places it straight onto the mesh with the
target's sharding, each process building only the slices its devices hold.
"""

import ctypes
import math
from typing import NamedTuple

import jax
import numpy as np

from md4_jax.errors import UserError
from md4_jax.storage import tensor_files


class Rule(NamedTuple):
  """How one of our per-layer parameters relates to its Hugging Face tensor."""
  name: str  # the tensor's name after "model.layers.{i}." (or the whole name, for the others)
  kind: str  # "same" (norms), "linear" (a kernel: transposed and reshaped), "bias" (reshaped)
  num_in: int = 1  # a linear kernel's input axes (2 for the output projection [heads, head_dim, D])


LAYER_RULES = {
    ("attn_norm", "scale"): Rule("input_layernorm.weight", "same"),
    ("mlp_norm", "scale"): Rule("post_attention_layernorm.weight", "same"),
    ("attention", "query", "kernel"): Rule("self_attn.q_proj.weight", "linear"),
    ("attention", "key", "kernel"): Rule("self_attn.k_proj.weight", "linear"),
    ("attention", "value", "kernel"): Rule("self_attn.v_proj.weight", "linear"),
    ("attention", "out", "kernel"): Rule("self_attn.o_proj.weight", "linear", num_in=2),
    ("attention", "query", "bias"): Rule("self_attn.q_proj.bias", "bias"),
    ("attention", "key", "bias"): Rule("self_attn.k_proj.bias", "bias"),
    ("attention", "value", "bias"): Rule("self_attn.v_proj.bias", "bias"),
    ("attention", "query_norm", "scale"): Rule("self_attn.q_norm.weight", "same"),
    ("attention", "key_norm", "scale"): Rule("self_attn.k_norm.weight", "same"),
    ("mlp", "gate", "kernel"): Rule("mlp.gate_proj.weight", "linear"),
    ("mlp", "up", "kernel"): Rule("mlp.up_proj.weight", "linear"),
    ("mlp", "down", "kernel"): Rule("mlp.down_proj.weight", "linear"),
}
MASK_ROW = "md4_jax.mask_embedding"  # [1, D]: the mask token's embedding row, which only our exports carry
GLOBAL_RULES = {("embed",): Rule("model.embed_tokens.weight", "embedding"),
                ("final_norm", "scale"): Rule("model.norm.weight", "same"),
                ("head", "kernel"): Rule("lm_head.weight", "linear")}


def param_names(path) -> tuple:
  """A parameter's path as plain names: (..., "blocks", 3, "attention", "query", "kernel")."""
  names = []
  for key in path:
    if isinstance(key, jax.tree_util.GetAttrKey):  # an nnx Variable's `.value`
      continue
    names.append(getattr(key, "key", getattr(key, "idx", key)))
  return tuple(names)


def where(names: tuple, scanned: bool):
  """(rule, layer index or None for every layer of a scanned stack, or -1 for a global parameter) for our
  parameter at `names`, or None when the checkpoint has no tensor for it (an objective's own parameters)."""
  if names and names[0] == "backbone":  # GenMD4 wraps the backbone beside its schedule
    names = names[1:]
  if names in GLOBAL_RULES:
    return GLOBAL_RULES[names], -1
  if names[:1] != ("blocks",):
    return None
  if scanned:
    return (LAYER_RULES[names[1:]], None) if names[1:] in LAYER_RULES else None
  return (LAYER_RULES[names[2:]], names[1]) if names[2:] in LAYER_RULES else None


def to_ours(rule: Rule, tensor: np.ndarray, shape: tuple) -> np.ndarray:
  """A Hugging Face tensor in our layout `shape` (one layer's; float32): a view where the layouts allow one. The
  embedding, one row longer than the checkpoint's, is `_embedding`'s."""
  tensor = np.asarray(tensor, np.float32)
  if rule.kind == "linear":
    return tensor.T.reshape(shape)
  return tensor.reshape(shape)


def to_hf(rule: Rule, param: np.ndarray) -> np.ndarray:
  """Our parameter (one layer's) in the Hugging Face layout, float32."""
  param = np.asarray(param, np.float32)
  if rule.kind == "linear":
    return param.reshape(math.prod(param.shape[: rule.num_in]), -1).T
  if rule.kind == "embedding":
    return param[:-1]
  return param.reshape(-1) if rule.kind == "bias" else param


def hf_shape(rule: Rule, shape: tuple) -> tuple:
  """The Hugging Face shape of our (one layer's) parameter of `shape`: what `to_hf` gives, without computing it."""
  if rule.kind == "linear":
    return (math.prod(shape[rule.num_in:]), math.prod(shape[: rule.num_in]))
  if rule.kind == "embedding":
    return (shape[0] - 1, *shape[1:])
  return (math.prod(shape),) if rule.kind == "bias" else shape


def tensor_names(rule: Rule, layer, shape: tuple) -> list:
  """[(Hugging Face tensor name, index in a scanned stack or None)] of our parameter at (rule, layer) of `shape`
  (`where`'s layer: -1 global, an int one layer, None every layer of a stack)."""
  if layer == -1:
    return [(rule.name, None)]
  if layer is not None:
    return [(f"model.layers.{layer}.{rule.name}", None)]
  return [(f"model.layers.{index}.{rule.name}", index) for index in range(shape[0])]


def _host_value(rule, layer, shape, tensors: dict, directory) -> np.ndarray:
  """Our parameter's full value on the host, read from the checkpoint (every layer, for a scanned stack)."""
  def one(name, layer_shape):
    if name not in tensors:
      raise UserError(f"{directory} lacks the tensor {name!r} this model needs; its config.json does not describe "
                      "its weights")
    return to_ours(rule, tensor_files.read_tensor(tensors[name]), layer_shape)
  if rule.kind == "embedding":
    return _embedding(tensors, rule.name, shape, directory)
  if layer == -1:
    return one(rule.name, shape)
  if layer is not None:
    return one(f"model.layers.{layer}.{rule.name}", shape)
  return np.stack([one(f"model.layers.{index}.{rule.name}", shape[1:]) for index in range(shape[0])])


def _embedding(tensors: dict, name: str, shape: tuple, directory) -> np.ndarray:
  """Our [V + 1, D] embedding: the checkpoint's V rows read straight into its first rows (no second copy of the
  largest tensor), and the mask row: our export's (MASK_ROW), else the mean of the others."""
  if name not in tensors:
    raise UserError(f"{directory} lacks the tensor {name!r} this model needs")
  tensor = tensors[name]
  if tensor.shape[0] + 1 != shape[0] or tensor.shape[1:] != shape[1:]:
    raise UserError(f"{directory} has a vocabulary of {tensor.shape[0]} tokens; this run's data.tokenizer has "
                    f"{shape[0] - 1}: use the checkpoint's own tokenizer (data.tokenizer='hf')")
  table = np.empty(shape, np.float32)
  if tensor.dtype == np.float32:
    tensor_files.read_tensor(tensor, out=table[:-1])
  else:
    table[:-1] = tensor_files.read_tensor(tensor)
  table[-1] = (tensor_files.read_tensor(tensors[MASK_ROW])[0] if MASK_ROW in tensors else
               table[:-1].mean(axis=0))
  return table


def load(directory, target, scanned: bool):
  """`target` (our params pytree: arrays, which are kept where the checkpoint has nothing, or
  jax.ShapeDtypeStruct with shardings) with every parameter the checkpoint has read from it and placed with the
  target leaf's sharding. UserError for a missing tensor, a shape that differs, or a tensor nothing reads."""
  tensors, used = tensor_files.read_checkpoint(directory), set()

  def place(path, leaf):
    _return_freed_memory()  # the previous tensor's host copy, freed when its place() returned
    found = where(param_names(path), scanned)
    if found is None:
      if isinstance(leaf, jax.ShapeDtypeStruct):
        raise UserError(f"{jax.tree_util.keystr(path)} has no tensor in {directory} and no initial value")
      return leaf
    rule, layer = found
    host = _host_value(rule, layer, leaf.shape, tensors, directory)
    if host.shape != tuple(leaf.shape):
      raise UserError(f"{directory}: {rule.name} gives {jax.tree_util.keystr(path)} the shape {host.shape}; the "
                      f"model has {tuple(leaf.shape)}")
    used.update(name for name, _ in tensor_names(rule, layer, leaf.shape))
    host = host.astype(leaf.dtype, copy=False)
    return jax.make_array_from_callback(host.shape, leaf.sharding, lambda index: host[index])

  placed = jax.tree_util.tree_map_with_path(place, target)
  # lm_head.weight is read by a model with an output layer of its own; with tied embeddings it is the embedding.
  unused = sorted(set(tensors) - used - {MASK_ROW, GLOBAL_RULES[("head", "kernel")].name})
  if unused:
    raise UserError(f"{directory} holds tensors this model does not read: {unused[:5]}; its config.json and the "
                    "weights disagree")
  return placed


def _return_freed_memory() -> None:
  """Hands the host memory of the tensors placed so far back to the system (glibc's malloc_trim): glibc keeps freed
  blocks of tens of MB in its heap, which over a checkpoint's hundreds of tensors added ~8% to the peak
  (benchmarks/hf_import.py). Elsewhere a no-op."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass
