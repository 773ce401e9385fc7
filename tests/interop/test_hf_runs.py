"""Runs that start from a Hugging Face checkpoint (model.init_from) with its own tokenizer (data.tokenizer="hf")."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from md4_jax.data import tokenizers
from md4_jax.data.modality import Text
from md4_jax.engine import sharding
from md4_jax.engine.experiment import Experiment
from md4_jax.errors import UserError
from md4_jax.run import config_check
from tests.conftest import CORPUS, assert_clear_error, launch_tiny, make_config, reference

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
hf_tokenizers = pytest.importorskip("tokenizers")

# The tiny config's transformer (1 layer, width 32, 2 heads), so its keys agree with the checkpoint's.
SHAPE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=64, eos_token_id=0)


def save_checkpoint(directory):
  """A random tiny Llama and a byte-level BPE tokenizer trained on CORPUS (fewer tokens than the model's 64
  embedding rows, as real checkpoints pad theirs), saved the way the Hub serves them."""
  tokenizer = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE())
  tokenizer.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = hf_tokenizers.decoders.ByteLevel()
  tokenizer.train_from_iterator([CORPUS], hf_tokenizers.trainers.BpeTrainer(vocab_size=56,
                                                                           special_tokens=["<|endoftext|>"]))
  transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(directory)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE)).float().eval()
  model.save_pretrained(directory)
  return model


def test_the_hf_tokenizer_gives_transformers_ids(tmp_path):
  save_checkpoint(tmp_path)
  ours = tokenizers.make_tokenizer("hf", str(tmp_path))
  theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
  text = "the lazy cat sat on the fat dog. <|endoftext|>a rat"
  assert ours.encode(text).tolist() == theirs(text, add_special_tokens=False).input_ids
  assert ours.vocab_size == 64 and ours.eos_id == 0  # the model's rows, not the tokenizer's 56 tokens
  assert ours.decode(ours.encode("the quick fox")) == "the quick fox"
  assert ours.decode([*ours.encode("the"), 64, *ours.encode(" cat")]) == "the[MASK] cat"
  again = tokenizers.tokenizer_from_json(json.loads(json.dumps(ours.to_json())))
  assert again == ours and again.encode(text).tolist() == ours.encode(text).tolist()
  with pytest.raises(UserError, match="data.tokenizer='hf' reads a Hugging Face tokenizer.json"):
    tokenizers.make_tokenizer("hf", "")
  (tmp_path / "tokenizer.json").write_text('{"not": "a tokenizer"}')
  with pytest.raises(UserError, match="not a Hugging Face tokenizer.json"):  # was the library's own exception
    tokenizers.make_tokenizer("hf", str(tmp_path))


def test_a_new_run_starts_at_the_checkpoints_weights(tmp_path):
  hf_model = save_checkpoint(tmp_path)
  config = make_config(tmp_path / "corpus.txt", objective="ar", model__init_from=str(tmp_path),
                       data__tokenizer="hf")
  run = config_check.validate(config, reference(), "train")
  assert config.data.tokenizer_path == str(tmp_path) and config.model.transformer.num_kv_heads == 1
  experiment = Experiment(config, Text(64, 16), sharding.make_mesh(config.mesh), run.model)
  state = experiment.init_state_from(str(tmp_path))
  ids = np.random.default_rng(0).integers(0, 56, (2, 16))
  with torch.no_grad():
    expected = hf_model(torch.tensor(ids)).logits.numpy()
  for which in ("params", "ema_params"):
    module = nnx.merge(experiment.graphdef, state[which])
    np.testing.assert_allclose(module(jnp.asarray(ids), jnp.zeros(2)), expected, atol=1e-4, rtol=0)
  assert all(a is not b for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(state["ema_params"])))


@pytest.mark.slow
def test_a_run_from_a_checkpoint_trains_resumes_and_samples_without_it(tmp_path):
  save_checkpoint(tmp_path / "hf")
  corpus, workdir = tmp_path / "corpus.txt", tmp_path / "run"
  corpus.write_text(CORPUS)
  flags = ("--config.objective=ar", f"--config.model.init_from={tmp_path / 'hf'}", "--config.data.tokenizer=hf")
  first = launch_tiny(corpus, workdir, *flags, "--config.train.num_steps=4")
  assert first.returncode == 0, first.stderr[-3000:]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["transformer"]["num_kv_heads"] == 1 and saved["model"]["init_from"] == str(tmp_path / "hf")
  assert json.loads((workdir / "tokenizer.json").read_text())["kind"] == "hf"
  resumed = launch_tiny(corpus, workdir, *flags, "--config.train.num_steps=8")
  assert resumed.returncode == 0 and "resuming from step 4" in resumed.stderr + resumed.stdout, resumed.stderr[-3000:]
  (tmp_path / "hf" / "tokenizer.json").unlink()  # the workdir's own copy decodes
  sampled = launch_tiny(corpus, workdir, *flags, "--mode", "sample")
  assert sampled.returncode == 0, sampled.stderr[-3000:]


@pytest.mark.slow
def test_a_model_key_that_disagrees_with_the_checkpoint_is_one_line(tmp_path):
  save_checkpoint(tmp_path / "hf")
  (tmp_path / "corpus.txt").write_text(CORPUS)
  result = launch_tiny(tmp_path / "corpus.txt", tmp_path / "run", "--config.objective=ar",
                       f"--config.model.init_from={tmp_path / 'hf'}", "--config.model.transformer.num_heads=8")
  assert_clear_error(result, "model.transformer.num_heads=8 differs from the checkpoint", "remove it from the config")
  result = launch_tiny(tmp_path / "corpus.txt", tmp_path / "run", "--config.objective=ar",
                       f"--config.model.init_from={tmp_path / 'hf'}")  # the tiny config's char tokenizer
  assert_clear_error(result, "has a vocabulary of 64 tokens; this run's data.tokenizer has 28", "data.tokenizer='hf'")
  result = launch_tiny(tmp_path / "corpus.txt", tmp_path / "run", "--config.objective=ar",
                       f"--config.model.init_from={tmp_path / 'nowhere'}")
  assert_clear_error(result, "has no config.json: model.init_from must name a Hugging Face model directory")
