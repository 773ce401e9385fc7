"""A Hugging Face causal LM's config.json as this project's transformer keys, and the refusals of what it cannot be.

Supported: `model_type` "llama" (Llama 2 / 3 without rope scaling, SmolLM2, TinyLlama), "qwen2" (Qwen2, Qwen2.5:
biases on the q / k / v projections) and "qwen3" (per-head RMSNorm on queries and keys). All are pre-norm RMSNorm
transformers with SwiGLU MLPs, rotary positions in the half-split convention and no biases elsewhere: this
project's transformer with time conditioning off. GPT-2 is left out: it needs LayerNorm, GELU, learned positions
and biases everywhere, a second transformer for a model no adaptation paper starts from.
"""

import json

from etils import epath

from md4_jax import parts
from md4_jax.errors import UserError

MODEL_TYPES = ("llama", "qwen2", "qwen3")
GROUP = "model.transformer"


def read(directory) -> dict:
  """The checkpoint directory's config.json; UserError when it has none."""
  path = epath.Path(directory) / "config.json"
  if not path.exists():
    raise UserError(f"{directory} has no config.json: model.init_from must name a Hugging Face model directory "
                    "(config.json + model.safetensors) or an md4-jax workdir")
  return json.loads(path.read_text())


def rope_theta(hf: dict) -> float:
  """The rotary base, where transformers 5 (rope_parameters) or earlier versions (rope_theta) keep it."""
  return float((hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10_000.0)))


def check_supported(hf: dict, where: str) -> None:
  """UserError naming the first config.json key this transformer cannot reproduce."""
  kind = hf.get("model_type")
  if kind not in MODEL_TYPES:
    raise UserError(f"{where}/config.json: model_type={kind!r} is not supported; the supported ones are "
                    f"{MODEL_TYPES} (Llama 2/3, SmolLM2, TinyLlama, Qwen2, Qwen2.5, Qwen3)")
  rope_type = (hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  rope_type = rope_type.get("rope_type", rope_type.get("type", "default"))
  refusals = [
      ("rope_scaling", rope_type != "default", f"{rope_type!r}: only unscaled rotary positions are supported"),
      ("use_sliding_window", bool(hf.get("use_sliding_window")), "sliding-window attention is not supported"),
      ("layer_types", any(layer != "full_attention" for layer in hf.get("layer_types") or ()),
       "layers other than full attention are not supported"),
      ("hidden_act", hf.get("hidden_act", "silu") != "silu", f"{hf.get('hidden_act')!r}: only SwiGLU ('silu') MLPs"),
      ("mlp_bias", bool(hf.get("mlp_bias")), "MLP biases are not supported"),
      ("attention_bias", bool(hf.get("attention_bias")),
       "a bias on the attention's output projection is not supported (Qwen2's q/k/v biases are)"),
      ("num_experts", bool(hf.get("num_experts") or hf.get("num_local_experts")), "mixtures of experts are not "
       "supported"),
  ]
  for key, refused, why in refusals:
    if refused:
      raise UserError(f"{where}/config.json: {key}: {why}")


def transformer_keys(hf: dict, where: str) -> dict:
  """{model.transformer key: value} the checkpoint's shape fixes (`where`: the directory, for messages)."""
  check_supported(hf, where)
  heads = hf["num_attention_heads"]
  return {"width": hf["hidden_size"], "num_layers": hf["num_hidden_layers"], "num_heads": heads,
          "num_kv_heads": hf.get("num_key_value_heads") or heads,
          "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads, "mlp_hidden": hf["intermediate_size"],
          "positions": "rope", "rope_theta": rope_theta(hf), "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
          "qkv_bias": hf["model_type"] == "qwen2", "qk_norm": hf["model_type"] == "qwen3",
          "tie_embeddings": bool(hf.get("tie_word_embeddings", False))}


def apply(config, reference, directory: str) -> None:
  """Sets config's model keys from the checkpoint at `directory`: model.transformer.* and a time-independent
  network. A key the config sets away from its default (`reference`: configs/base.py) to another value than the
  checkpoint's is refused in one line: the weights fix it. With data.tokenizer="hf", data.tokenizer_path defaults
  to the directory (its tokenizer.json)."""
  hf = read(directory)
  fixed = {f"{GROUP}.{key}": value for key, value in transformer_keys(hf, directory).items()}
  fixed.update({"model.backbone": "transformer", "model.time_conditioning": False})
  fix_keys(config, reference, fixed, directory)
  if config.data.tokenizer == "hf" and not config.data.tokenizer_path:
    config.data.tokenizer_path = directory  # the checkpoint's own tokenizer.json


def fix_keys(config, reference, fixed: dict, directory: str) -> None:
  """Sets config's keys to `fixed` {dotted key: value} (the weights at model.init_from=`directory` fix them); a key
  the config sets away from its default (`reference`) to another value is refused in one line."""
  for key, value in fixed.items():
    group, _, name = key.rpartition(".")
    now, default = parts.value_at(config, group)[name], parts.value_at(reference, group)[name]
    if now != default and now != value:
      raise UserError(f"{key}={now!r} differs from the checkpoint model.init_from={directory!r} ({value!r}): the "
                      f"weights fix it; remove it from the config")
    parts.value_at(config, group)[name] = value
