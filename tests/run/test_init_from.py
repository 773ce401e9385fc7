"""model.init_from = an md4-jax workdir (run/init_from.py): the source fixes the network's keys, its EMA params start
the new run, and an AR run adapted into BD3 or MD4 trains, resumes exactly and samples."""

import signal

import jax
import numpy as np
import pytest

from md4_jax.data import modality as modalities
from md4_jax.engine import sharding
from md4_jax.engine.experiment import Experiment
from md4_jax.errors import UserError
from md4_jax.run import config_check, init_from, modes
from tests.conftest import make_config, reference, train_tiny
from tests.test_end_to_end import assert_same_arrays, metric_rows, saved_state, train_until_sigterm_at_step_7


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory):
  """(corpus, workdir): the tiny config trained autoregressively (two keys away from their defaults, which an
  adapted run takes from it), with checkpoints at steps 4, 8 and 12."""
  corpus, workdir, _ = train_tiny(tmp_path_factory.mktemp("ar"), objective="ar", model__transformer__mlp_hidden=40,
                                  model__transformer__qk_norm=True)
  return corpus, workdir


def names_of(path) -> tuple:
  """A parameter's names, the same for a live state and Orbax's raw read of one (string indices, `value` keys)."""
  return tuple(str(name) for name in init_from._backbone_names(path) if name != "value")


def adapted(corpus, ar_workdir, **overrides):
  return make_config(corpus, model__init_from=str(ar_workdir), diffusion__shift=True, **overrides)


def test_the_source_run_fixes_the_network_keys(ar_run):
  corpus, workdir = ar_run
  config = adapted(corpus, workdir, objective="bd3")
  config_check.validate(config, reference(), "train")
  assert (config.model.transformer.mlp_hidden, config.model.transformer.qk_norm) == (40, True)
  assert config.model.time_conditioning is False  # the AR network reads no time
  with pytest.raises(UserError, match="model.transformer.mlp_hidden=64 differs from the checkpoint"):
    config_check.validate(adapted(corpus, workdir, model__transformer__mlp_hidden=64), reference(), "train")
  with pytest.raises(UserError, match="model.init_step=3 has no effect on this run"):
    config_check.validate(make_config(corpus, model__init_step=3), reference(), "train")


@pytest.mark.parametrize("objective", ["md4", "genmd4"])
def test_a_new_run_starts_at_the_sources_ema_params(ar_run, objective):
  corpus, workdir = ar_run
  config = adapted(corpus, workdir, objective=objective, model__init_step=8)
  run = config_check.validate(config, reference(), "train")
  experiment = Experiment(config, modalities.load(workdir, 16), sharding.make_mesh(config.mesh), run.model)
  state, step = init_from.initial_state(experiment, str(workdir), 8)
  source = saved_state(workdir, 8)["ema_params"]
  source_leaves = {names_of(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(source)}
  matched = 0
  for which in ("params", "ema_params"):
    for path, leaf in jax.tree_util.tree_leaves_with_path(state[which]):
      names = names_of(path)
      if names in source_leaves:
        np.testing.assert_array_equal(leaf, source_leaves[names])
        matched += 1
      else:
        assert objective == "genmd4" and names[0] == "schedule"  # the objective's own: its initial value
  assert step == 8 and matched == 2 * len(source_leaves) and int(state["step"]) == 0
  assert all(float(np.abs(x).max()) == 0 for x in jax.tree.leaves(state["opt_state"]) if np.ndim(x) > 0)


def test_a_source_on_other_token_ids_or_without_a_checkpoint_is_refused(ar_run, tmp_path):
  corpus, workdir = ar_run
  other = tmp_path / "other.txt"
  other.write_text("0123456789 " * 200)
  with pytest.raises(UserError, match="was trained on other token ids"):
    modes.main(adapted(other, workdir), tmp_path / "digits", "train", reference=reference())
  with pytest.raises(UserError, match="no checkpoint for step 5"):
    modes.main(adapted(corpus, workdir, model__init_step=5), tmp_path / "run", "train", reference=reference())


@pytest.mark.slow
def test_an_adapted_run_trains_resumes_exactly_and_samples(ar_run, tmp_path, monkeypatch):
  corpus, workdir = ar_run
  config = adapted(corpus, workdir, objective="bd3", sampler__kv_cache="exact")
  whole = modes.main(config, tmp_path / "whole", "train", reference=reference())
  assert np.isfinite(whole["eval/bpt"])
  assert train_until_sigterm_at_step_7(config, tmp_path / "resumed", monkeypatch) == 128 + signal.SIGTERM
  monkeypatch.undo()
  modes.main(adapted(corpus, workdir, objective="bd3", sampler__kv_cache="exact"), tmp_path / "resumed", "train",
             reference=reference())
  assert metric_rows(tmp_path / "resumed") == metric_rows(tmp_path / "whole")
  assert_same_arrays(saved_state(tmp_path / "resumed", 12), saved_state(tmp_path / "whole", 12))
  samples = modes.main(config, tmp_path / "whole", "sample", reference=reference(), num_samples=3)
  assert len(samples["samples"]) == 3 and all(len(text) == 16 for text in samples["samples"])
  md4 = modes.main(adapted(corpus, workdir, diffusion__anneal_steps=6), tmp_path / "md4", "train",
                   reference=reference())
  assert np.isfinite(md4["eval/bpt"])


def test_the_shipped_adaptation_configs_validate_and_build(tmp_path, monkeypatch):
  """configs/adapt_quickstart.py (both variants) on a stand-in for the quick start AR run, and the SmolLM2 recipe on
  a stand-in for its checkpoint (its config.json): SmolLM2-135M's published 134,515,008 parameters, plus the mask
  token's row (576)."""
  import importlib  # noqa: PLC0415
  import json  # noqa: PLC0415

  from md4_jax import objectives  # noqa: PLC0415
  from md4_jax.data import pipeline  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  ar = importlib.import_module("configs.quickstart_ar").get_config()
  (tmp_path / "runs/quickstart_ar/checkpoints").mkdir(parents=True)
  (tmp_path / "runs/quickstart_ar/config.json").write_text(json.dumps(ar.to_dict()))
  smollm2 = dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                 num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, rms_norm_eps=1e-5,
                 rope_theta=100000.0, tie_word_embeddings=True, hidden_act="silu")
  (tmp_path / "ckpt/smollm2-135m").mkdir(parents=True)
  (tmp_path / "ckpt/smollm2-135m/config.json").write_text(json.dumps(smollm2))
  hf_tokenizers = pytest.importorskip("tokenizers")  # the hf extra; a two-word stand-in for its tokenizer.json
  hf_tokenizers.Tokenizer(hf_tokenizers.models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(
      str(tmp_path / "ckpt/smollm2-135m/tokenizer.json"))
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path))
  counts = {}
  for name, variant in (("adapt_quickstart", "bd3"), ("adapt_quickstart", "md4"), ("adapt_smollm2", "bd3"),
                        ("adapt_smollm2", "md4")):
    config = importlib.import_module(f"configs.{name}").get_config(variant)
    run = config_check.validate(config, reference(), "params")
    assert config.objective == variant and config.diffusion.shift == (variant == "bd3" or name == "adapt_smollm2")
    make = objectives.build_model(config, pipeline.nominal_modality(config.data), run.model).make
    counts[name, variant] = sum(x.size for x in jax.tree.leaves(nnx.state(nnx.eval_shape(lambda: make(nnx.Rngs(0))))))
  assert counts["adapt_quickstart", "bd3"] == counts["adapt_quickstart", "md4"] == 1_056_768  # the AR network's
  assert counts["adapt_smollm2", "bd3"] == counts["adapt_smollm2", "md4"] == 134_515_008 + 576
