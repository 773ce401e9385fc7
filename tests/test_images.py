"""Images end to end: the digits source, the image bound against the text oracles, both image backbones
(train, resume exactly after a kill, eval in bits/dim, sample grids, completion, class labels), the
published configs' sizes."""

import gzip
import importlib
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from md4_jax import objectives
from md4_jax.data import pipeline, shipped
from md4_jax.data.sources import digits
from md4_jax.engine import sharding
from md4_jax.engine.experiment import Experiment
from md4_jax.errors import UserError
from md4_jax.run import config_check, modes
from tests import tiny_image_config
from tests.conftest import override, reference
from tests.test_end_to_end import assert_same_arrays, metric_rows, saved_state, train_until_sigterm_at_step_7

pytestmark = pytest.mark.slow  # whole runs: the full suite only (README)


def image_config(**overrides):
  return override(tiny_image_config.get_config(overrides.pop("model__backbone", "unet")), **overrides)


def test_digits_source_is_the_shipped_digits_with_every_tenth_held_out():
  data = pipeline.load_data(image_config().data)
  # The shipped file read line by line, apart from the loader: "64 pixels,digit" per image.
  rows = [[int(value) for value in line.split(",")]
          for line in gzip.decompress(shipped.path("digits.csv.gz").read_bytes()).decode().splitlines()]
  assert (len(data.train), len(data.eval)) == (1617, 180)
  np.testing.assert_array_equal(data.eval[3]["tokens"], rows[30][:64])  # image 30: held out
  assert data.eval[3]["label"] == rows[30][64] == 0 and data.train[9]["label"] == rows[10 + 1][64]
  np.testing.assert_array_equal(data.train[9]["tokens"], rows[11][:64])
  labels = np.concatenate([[data.train[i]["label"] for i in range(len(data.train))],
                           [data.eval[i]["label"] for i in range(len(data.eval))]])
  # UCI's published class counts of the test set (optdigits.tes), which scikit-learn's digits are.
  assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
  assert data.modality.to_json() == {"kind": "image", "height": 8, "width": 8, "channels": 1, "levels": 17,
                                     "num_classes": 10}


@pytest.fixture(scope="module", params=["unet", "uvit"])
def untrained(request):
  config = image_config(model__backbone=request.param, eval__time_samples=64, eval__batch_size=180,
                        eval__max_sequences=0)
  experiment = Experiment(config, digits.DIGITS, sharding.make_mesh(config.mesh))
  return experiment, experiment.init_state(experiment.base_key)


def test_untrained_image_model_bound_is_log2_levels(untrained):
  """The zero-initialised head predicts uniformly: the bound's expectation is exactly log2(17) bits/dim."""
  from md4_jax.evals import bound

  experiment, state = untrained
  values = bound.evaluate(experiment, state["params"], pipeline.load_data(experiment.config.data).eval)
  assert abs(values["bpt"] - math.log2(17)) < 4 * values["bpt_stderr"] + 1e-4
  assert "ppl" not in values  # images report bits/dim only


def test_antithetic_and_iid_times_agree_on_images(untrained):
  """After a few steps the model is informative (its loss depends on t); both time draws give one bound."""
  from md4_jax.evals import bound

  experiment, state = untrained
  data = pipeline.load_data(experiment.config.data)
  rows = np.stack([data.train[i]["tokens"] for i in range(8)])
  batch = sharding.global_batch({"tokens": rows, "token_mask": np.ones_like(rows)}, experiment.mesh)
  state = jax.tree.map(jnp.copy, state)
  for _ in range(5):
    state, _ = experiment.train_step(state, batch)
  iid = experiment.with_overrides("diffusion", {"antithetic": False})
  a = bound.evaluate(experiment, state["params"], data.eval)
  b = bound.evaluate(iid, state["params"], data.eval)
  assert a["bpt"] < math.log2(17) - 0.1  # informative
  assert abs(a["bpt"] - b["bpt"]) < 5 * math.hypot(a["bpt_stderr"], b["bpt_stderr"])


def test_label_dropout_replaces_labels_with_the_null_class_in_training_only():
  config = image_config(model__class_conditional=True, model__label_dropout=0.25)
  experiment = Experiment(config, digits.DIGITS, sharding.make_mesh(config.mesh))
  params = experiment.init_state(experiment.base_key)["params"]
  batch = {"tokens": jnp.zeros((4000, 64), jnp.int32), "label": jnp.arange(4000) % 10}
  trained = experiment._network(params, batch, jax.random.key(3)).label_B
  dropped = np.asarray(trained == 10)
  assert abs(dropped.mean() - 0.25) < 0.025  # 4,000 draws: std 0.007
  np.testing.assert_array_equal(np.asarray(trained)[~dropped], np.arange(4000)[~dropped] % 10)
  np.testing.assert_array_equal(experiment._network(params, batch).label_B, batch["label"])  # eval: kept


@pytest.mark.parametrize("module, published, backbone", [("configs.cifar10", 28e6, "unet"),
                                                         ("configs.imagenet64", 198e6, "uvit")])
def test_published_image_configs_build_to_their_sizes(module, published, backbone):
  config = importlib.import_module(module).get_config()
  run = config_check.validate(config, reference(), "params")
  make_model = objectives.build_model(config, run.modality, run.model).make
  count = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(nnx.eval_shape(lambda: make_model(nnx.Rngs(0))))))
  assert config.model.backbone == backbone and abs(count / published - 1) < 0.05


def test_digits_config_validates():
  config = importlib.import_module("configs.digits").get_config()
  config_check.validate(config, reference(), "params")


@pytest.mark.parametrize("overrides, message", [
    ({"model__backbone": "unet", "data__source": "embedded"}, "models images"),
    ({"objective": "ar"}, "needs a causal network"),
    ({"model__class_conditional": True, "data__source": "imagenet64"}, "has no class labels"),
    ({"sampler__guidance": 2.0}, "needs a class-conditional model"),
    ({"train__logits_capacity": 0.5}, "separate output layer"),
])
def test_image_config_mistakes_are_clear(tmp_path, overrides, message):
  with pytest.raises(UserError, match=message):
    modes.main(image_config(**overrides), tmp_path / "run", "train", reference=reference())


@pytest.fixture(scope="module", params=["unet", "uvit"])
def image_run(request, tmp_path_factory):
  """An uninterrupted 12-step class-conditional run per backbone."""
  workdir = tmp_path_factory.mktemp(request.param) / "run"
  config = image_config(model__backbone=request.param, model__class_conditional=True)
  result = modes.main(config, workdir, "train", reference=reference())
  return config, workdir, result


def test_image_run_writes_bits_per_dim_and_pictures(image_run):
  config, workdir, result = image_run
  assert json.loads((workdir / "modality.json").read_text())["kind"] == "image"
  assert not (workdir / "tokenizer.json").exists()
  for name in ("step_6.png", "step_6_process.png", "step_12.png", "step_12.jsonl"):
    assert (workdir / "samples" / name).is_file()
  lines = [json.loads(line) for line in (workdir / "samples" / "step_12.jsonl").read_text().splitlines()]
  assert [line["label"] for line in lines] == [0, 1, 2, 3] and all(len(line["tokens"]) == 64 for line in lines)
  assert all(0 <= token < 17 for line in lines for token in line["tokens"])
  evals = [row for row in metric_rows(workdir) if "eval/bpt" in row]
  assert [row["step"] for row in evals] == [6, 12] and "eval/ppl" not in evals[-1]
  assert evals[-1]["eval/bpt"] < math.log2(17)


def test_image_run_resumes_exactly_after_sigterm(image_run, tmp_path, monkeypatch):
  config, reference_dir, _ = image_run
  workdir = tmp_path / "run"
  train_until_sigterm_at_step_7(config, workdir, monkeypatch)
  modes.main(config, workdir, "train", reference=reference())
  assert metric_rows(workdir) == metric_rows(reference_dir)  # dropout and label dropout keys included
  assert_same_arrays(saved_state(workdir, 12), saved_state(reference_dir, 12))


def test_image_eval_reports_bits_per_dim(image_run, capsys):
  config, workdir, result = image_run
  evaluated = modes.main(config, workdir, "eval", reference=reference())
  assert evaluated["eval/bpt"] == result["eval/bpt"]  # the same bound as the training eval
  table = (workdir / "eval" / "step_12.md").read_text()
  assert "bits/dim" in table and "perplexity" not in table and "bits/token" not in table
  report = (workdir / "eval" / "report.md").read_text()
  assert "bits/dim" in report and "![samples](../samples/step_12.png)" in report


def test_image_sample_mode_class_labels_and_completion(image_run):
  config, workdir, _ = image_run
  labelled = modes.main(config, workdir, "sample", reference=reference(), num_samples=3, class_label="7")
  lines = [json.loads(line) for line in open(workdir / "samples" / "step_12_ancestral.jsonl")]
  assert [line["label"] for line in lines] == [7, 7, 7] and labelled["path"].endswith("step_12_ancestral.png")
  completed = modes.main(config, workdir, "sample", reference=reference(), num_samples=4, complete="top")
  held_out = pipeline.load_data(config.data).eval
  for i, tokens in enumerate(completed["tokens"]):
    np.testing.assert_array_equal(tokens[:32], held_out[i]["tokens"][:32])  # the kept top half
    assert (tokens < 17).all()
  assert any(path.endswith("_completion.png") for path in completed["paths"])
  guided = modes.main(override(config, sampler__guidance=1.5, sampler__name="exact"), workdir, "sample",
                    reference=reference(), num_samples=2, class_label="1,2")
  assert (guided["tokens"] < 17).all() and guided["nfe"] <= 64


@pytest.mark.parametrize("kwargs, message", [({"prompt": "the"}, "condition text runs"),
                                             ({"class_label": "12"}, "0..9"),
                                             ({"complete": "bottom"}, "choose one of")])
def test_image_sample_mode_input_errors(image_run, kwargs, message):
  config, workdir, _ = image_run
  with pytest.raises(UserError, match=message):
    modes.main(config, workdir, "sample", reference=reference(), **kwargs)


@pytest.mark.parametrize("sampler", [{"name": "ancestral"}, {"name": "mean"}, {"name": "exact", "tokens_per_call": 4},
                                     {"name": "confidence"}, {"name": "semi_ar", "block_length": 16, "inner": "mean"}])
def test_every_sampler_fills_images(sampler):
  """Each sampler of the samplers issue on an image model: every sub-pixel filled with a level, given
  sub-pixels kept, and the fill order recorded for the reverse-process strip."""
  from md4_jax.engine import generate
  from md4_jax.run import conditioning

  config = image_config(sampler__steps=8)
  experiment = Experiment(config, digits.DIGITS, sharding.make_mesh(config.mesh)).with_overrides(
      "sampler", sampler)
  params = experiment.init_state(experiment.base_key)["ema_params"]
  originals = np.stack([row["tokens"] for row in (pipeline.load_data(config.data).eval[i] for i in range(3))])
  start = conditioning.completion_start(originals, digits.DIGITS, "left")
  samples = generate.draw_samples(experiment, params, jax.random.key(0), start)
  kept = start < 17
  assert (samples.tokens < 17).all() and (samples.tokens[kept] == originals[kept]).all()
  assert (samples.order[kept] == 0).all() and (samples.order[~kept] > 0).all()
