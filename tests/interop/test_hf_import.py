"""Hugging Face Llama / Qwen2 / Qwen3 checkpoints imported into our transformer give transformers' own logits.

Tiny models with random weights (norm scales and biases too, so their mapping is tested), written by
`save_pretrained` whole and sharded; transformers and a CPU torch are the oracle (the test extra).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from md4_jax import objectives
from md4_jax.data.modality import Text
from md4_jax.engine import sharding
from md4_jax.errors import UserError
from md4_jax.interop import hf_config, hf_weights
from tests.conftest import override, reference

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SHAPE = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=64)
CASES = {  # name: (config class, its keys): GQA + tied embeddings, q/k/v biases, q/k norms with a wider head
    "llama": ("LlamaConfig", dict(num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-5,
                                  rope_theta=500.0)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=4, rope_theta=1e6)),
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=1, head_dim=16)),
}


def save_hf_model(directory, name: str, sharded: bool = False):
  """A random causal LM of the case `name` saved with save_pretrained; returns the torch model."""
  config_class, keys = CASES[name]
  config = getattr(transformers, config_class)(**SHAPE, **keys)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
  with torch.no_grad():  # norms start at one and biases at zero: move them so their mapping shows
    for parameter in model.parameters():
      parameter.add_(0.05 * torch.randn_like(parameter))
  model.save_pretrained(directory, max_shard_size="20KB" if sharded else "1GB")
  return model


def imported(directory, scan_layers: bool = False, seq_len: int = 16):
  """Our AR model (config, module) with the checkpoint's params loaded."""
  config = override(reference(), objective="ar", data__seq_len=seq_len, model__transformer__scan_layers=scan_layers)
  hf_config.apply(config, reference(), str(directory))
  vocab = hf_config.read(directory)["vocab_size"]
  model = objectives.build_model(config, Text(vocab, seq_len), objectives.chosen(config))
  module = model.make(nnx.Rngs(0))
  graphdef, params = nnx.split(module)
  mesh = sharding.make_mesh(config.mesh)
  target = jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), params,
                        sharding.state_shardings(params, mesh))
  return config, nnx.merge(graphdef, hf_weights.load(directory, target, scan_layers))


@pytest.mark.parametrize("name, sharded, scan_layers", [("llama", False, False), ("llama", True, True),
                                                        ("qwen2", True, False), ("qwen3", False, True)])
def test_imported_model_gives_transformers_logits(tmp_path, name, sharded, scan_layers):
  hf_model = save_hf_model(tmp_path, name, sharded)
  if sharded:
    assert (tmp_path / "model.safetensors.index.json").exists()
  config, module = imported(tmp_path, scan_layers)
  ids = np.random.default_rng(1).integers(0, SHAPE["vocab_size"], (2, 16))
  with torch.no_grad():
    expected = hf_model(torch.tensor(ids)).logits.numpy()
  ours = np.asarray(module(jnp.asarray(ids), jnp.zeros(2)))
  assert ours.shape == expected.shape
  np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
  assert config.model.transformer.tie_embeddings == (name == "llama")


def test_the_checkpoint_fixes_the_model_keys(tmp_path):
  save_hf_model(tmp_path, "qwen3")
  config = override(reference(), objective="ar")
  hf_config.apply(config, reference(), str(tmp_path))
  keys = config.model.transformer
  assert (keys.width, keys.num_layers, keys.num_heads, keys.num_kv_heads, keys.head_dim, keys.mlp_hidden) == \
      (32, 2, 4, 1, 16, 48)
  assert keys.qk_norm and not keys.qkv_bias and not config.model.time_conditioning
  config = override(reference(), objective="ar", model__transformer__width=64)
  with pytest.raises(UserError, match=r"model.transformer.width=64 differs from the checkpoint .* \(32\): the "
                                      r"weights fix it; remove it from the config"):
    hf_config.apply(config, reference(), str(tmp_path))


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gpt2"}, r"model_type='gpt2' is not supported"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, r"rope_scaling: 'llama3': only unscaled"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, r"rope_scaling: 'yarn'"),
    ({"use_sliding_window": True}, r"use_sliding_window: sliding-window attention is not supported"),
    ({"layer_types": ["sliding_attention", "full_attention"]}, r"layer_types: layers other than full attention"),
    ({"hidden_act": "gelu"}, r"hidden_act: 'gelu'"),
    ({"attention_bias": True}, r"attention_bias: a bias on the attention's output projection"),
    ({"num_local_experts": 8}, r"num_experts: mixtures of experts"),
])
def test_unsupported_configs_are_refused_naming_the_key(tmp_path, change, message):
  hf = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 48, "vocab_size": 61, **change}
  with pytest.raises(UserError, match=message):
    hf_config.transformer_keys(hf, str(tmp_path))


def test_a_checkpoint_that_disagrees_with_its_config_is_refused(tmp_path):
  save_hf_model(tmp_path, "qwen2")
  config = (tmp_path / "config.json")
  config.write_text(config.read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 1'))
  with pytest.raises(UserError, match="holds tensors this model does not read: \\['model.layers.1"):
    imported(tmp_path)
  config.write_text(config.read_text().replace('"num_hidden_layers": 1', '"num_hidden_layers": 3'))
  with pytest.raises(UserError, match="lacks the tensor 'model.layers.2\\."):
    imported(tmp_path)
