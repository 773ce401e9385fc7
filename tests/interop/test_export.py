"""--mode export: a run's params as safetensors under our names, or as a Hugging Face causal LM that transformers
loads and that imports back bitwise."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from md4_jax.engine import sharding
from md4_jax.engine.checkpoints import restore_state
from md4_jax.engine.experiment import Experiment
from md4_jax.data import modality as modalities
from md4_jax.errors import UserError
from md4_jax.interop import export, hf_weights
from md4_jax.run import modes
from tests.conftest import make_config, reference, train_tiny

pytestmark = pytest.mark.slow  # each test trains or restores a run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory):
  """A tiny AR run with grouped-query attention and tied embeddings, trained 4 steps."""
  return train_tiny(tmp_path_factory.mktemp("ar_export"), objective="ar", train__num_steps=4,
                    model__transformer__num_kv_heads=1, model__transformer__tie_embeddings=True)


def restored(corpus, workdir, **overrides):
  config = make_config(corpus, objective="ar", train__num_steps=4, model__transformer__num_kv_heads=1,
                       model__transformer__tie_embeddings=True, **overrides)
  saved = modalities.load(workdir, config.data.seq_len)
  experiment = Experiment(config, saved, sharding.make_mesh(config.mesh))
  state = restore_state(workdir / "checkpoints", None, experiment.abstract_state, experiment.state_summary)
  return config, experiment, state


def run_export(corpus, workdir, fmt: str):
  config = make_config(corpus, objective="ar", train__num_steps=4, model__transformer__num_kv_heads=1,
                       model__transformer__tie_embeddings=True)
  return modes.main(config, workdir, "export", reference=reference(), export_format=fmt)


def test_the_hf_export_loads_in_transformers_and_imports_back_bitwise(ar_run):
  corpus, workdir, _ = ar_run
  directory = run_export(corpus, workdir, "hf")["directory"]
  assert directory.endswith("step_4_hf")
  config, experiment, state = restored(corpus, workdir)
  params = state["ema_params"]  # eval.params' default
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(directory).float().eval()
  assert type(hf_model).__name__ == "LlamaForCausalLM" and hf_model.config.num_key_value_heads == 1
  ids = np.random.default_rng(0).integers(0, experiment.vocab_size, (2, 16))
  with torch.no_grad():
    theirs = hf_model(torch.tensor(ids)).logits.numpy()
  ours = nnx.merge(experiment.graphdef, params)(jnp.asarray(ids), jnp.zeros(2))
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  again = hf_weights.load(directory, params, scanned=False)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the mask row too


def test_the_safetensors_export_keeps_our_names_and_the_runs_config(ar_run):
  corpus, workdir, _ = ar_run
  directory = run_export(corpus, workdir, "safetensors")["directory"]
  _, _, state = restored(corpus, workdir)
  written = safetensors_numpy.load_file(f"{directory}/model.safetensors")
  expected = export.our_names(state["ema_params"])
  assert set(written) == set(expected) and "blocks.0.attention.query.kernel" in written
  for name, leaf in expected.items():
    np.testing.assert_array_equal(written[name], np.asarray(leaf))
  assert json.loads(open(f"{directory}/config.json").read())["model"]["transformer"]["num_kv_heads"] == 1


def test_a_bidirectional_run_is_refused_as_a_causal_lm(tiny_run):
  corpus, workdir, _ = tiny_run
  with pytest.raises(UserError, match=r"--format hf: objective='md4' trains a bidirectional .* export with "
                                      r"--format safetensors"):
    modes.main(make_config(corpus), workdir, "export", reference=reference(), export_format="hf")
