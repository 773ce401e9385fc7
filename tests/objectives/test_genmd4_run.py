"""GenMD4 end to end with the tiny config: trains the schedule, resumes exactly, evaluates, samples."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4_jax.core import diffusion, per_token
from md4_jax.data import modality
from md4_jax.engine import sharding
from md4_jax.engine.experiment import Experiment
from md4_jax.run import modes
from tests.conftest import CORPUS, launch_tiny, make_config, reference, train_tiny
from tests.test_end_to_end import assert_same_arrays, metric_rows, saved_state, train_until_sigterm_at_step_7

pytestmark = pytest.mark.slow  # whole runs: the full suite only (README)

GENMD4 = {"objective": "genmd4", "diffusion__genmd4__learning_rate": 0.05}


@pytest.fixture(scope="module")
def genmd4_run(tmp_path_factory):
  return train_tiny(tmp_path_factory.mktemp("genmd4"), **GENMD4)


def test_the_schedule_trains_and_is_logged(genmd4_run):
  corpus, workdir, result = genmd4_run
  rows = metric_rows(workdir)
  train = [r for r in rows if "train/loss" in r]
  assert {"train/surrogate", "train/bits", "train/diffusion", "train/power_min", "train/power_mean",
          "train/power_max"} <= set(train[-1])
  assert train[-1]["train/power_min"] < 0.99 < 1.01 < train[-1]["train/power_max"]  # moved from 1.0 each way
  assert train[-1]["train/surrogate"] != train[-1]["train/loss"]
  assert np.isfinite(result["eval/bpt"])
  saved = json.loads((workdir / "eval" / "powers_step_12.json").read_text())["powers"]
  assert len(saved) == len(json.loads((workdir / "tokenizer.json").read_text())["alphabet"])
  assert list(saved.values()) == sorted(saved.values())
  assert (workdir / "eval" / "powers_step_6.png").is_file()
  assert "powers_step_12.png" in (workdir / "eval" / "report.md").read_text()


def test_train_loss_is_the_bound_of_the_step_batch(genmd4_run):
  """train/loss of one step = the mean of the two draws' bounds, recomputed here from the pieces."""
  corpus, _, _ = genmd4_run
  config = make_config(corpus, **GENMD4)
  mesh = sharding.make_mesh(config.mesh)
  tokens = np.asarray([[ord(c) % 20 for c in CORPUS[i:i + 16]] for i in range(0, 128, 16)], np.int32)
  batch = {"tokens": tokens, "token_mask": np.ones_like(tokens).astype(np.int32)}
  experiment = Experiment(config, modality.Text(27, 16), mesh)
  state = experiment.init_state(experiment.base_key)
  params = jax.tree.map(np.asarray, state["params"])
  _, metrics = experiment.train_step(state, sharding.global_batch(batch, mesh))

  key = jax.random.fold_in(experiment.base_key, 0)
  net = experiment._network(params, batch, key)
  schedule = per_token.TokenPoly(jax.nn.softplus(params["schedule"]["theta"][...]))
  time_key, mask_key = jax.random.split(key)
  t_B = 1e-3 + (1 - 1e-3) * diffusion.sample_times(time_key, 8, antithetic=True)
  mask_prob = per_token.token_values(schedule.mask_prob(t_B), tokens)
  bounds = []
  for draw_key in (mask_key, jax.random.fold_in(mask_key, 1)):
    z = per_token.mask_tokens(draw_key, tokens, mask_prob, 27, batch["token_mask"])
    per_position = per_token.integrand(net(z, t_B), tokens, schedule.rate(t_B)[:, None])
    bounds.append((1 - 1e-3) * jnp.sum(jnp.where(z == 27, per_position, 0.0)))
  fixed = per_token.reconstruction(schedule, tokens, batch["token_mask"], 1e-3).sum() + 128 * 1e-4 * np.log(27)
  want = (0.5 * (bounds[0] + bounds[1]) + fixed) / 128
  np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
  assert abs(float(metrics["surrogate"]) - float(metrics["loss"])) > 1e-6


def test_resume_after_sigterm_is_bitwise_identical(genmd4_run, tmp_path, monkeypatch):
  corpus, reference_dir, _ = genmd4_run
  workdir = tmp_path / "run"
  train_until_sigterm_at_step_7(make_config(corpus, **GENMD4), workdir, monkeypatch)
  modes.main(make_config(corpus, **GENMD4), workdir, "train", reference=reference())
  assert metric_rows(workdir) == metric_rows(reference_dir)
  assert_same_arrays(saved_state(workdir, 12), saved_state(reference_dir, 12))


def test_eval_and_sampling_commands(genmd4_run):
  corpus, workdir, result = genmd4_run
  evaluated = modes.main(make_config(corpus, **GENMD4), workdir, "eval", reference=reference())
  assert evaluated["eval/bpt"] == result["eval/bpt"]
  record = json.loads((workdir / "eval" / "step_12.json").read_text())
  assert [row["steps"] for row in record["bound_by_steps"]] == [16, 64, 256, 0]
  for sampler in ("exact", "ancestral", "confidence", "remdm"):
    done = launch_tiny(corpus, workdir, "--mode=sample", "--config.objective=genmd4", f"--sampler.name={sampler}",
                       "--num_samples=2", "--prompt=the ", "--config.diffusion.genmd4.learning_rate=0.05")
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((workdir / "samples" / f"step_12_{sampler}.jsonl").read_text().splitlines()[0])
    assert record["text"].startswith("the ") and record["nfe"] >= 1


def test_genmd4_on_images_with_class_labels_completion_and_guidance(tmp_path):
  """The same objective on pixels (a U-Net, class-conditional): trains, writes the powers per pixel level,
  samples with class labels, completes held-out images, and guides the exact sampler."""
  from md4_jax.data import pipeline
  from tests import tiny_image_config
  from tests.conftest import override

  config = override(tiny_image_config.get_config(), objective="genmd4", model__class_conditional=True,
                    train__num_steps=4, train__eval_every=4)
  workdir = tmp_path / "run"
  result = modes.main(config, workdir, "train", reference=reference())
  assert np.isfinite(result["eval/bpt"])
  assert list(json.loads((workdir / "eval" / "powers_step_4.json").read_text())["powers"]) != []
  labelled = modes.main(config, workdir, "sample", reference=reference(), num_samples=2, class_label="7")
  assert (np.asarray(labelled["tokens"]) < 17).all()
  completed = modes.main(config, workdir, "sample", reference=reference(), num_samples=2, complete="left")
  held_out = pipeline.load_data(config.data).eval
  for i, tokens in enumerate(completed["tokens"]):
    kept = np.arange(64) % 8 < 4  # the left half of each 8x8 row
    np.testing.assert_array_equal(np.asarray(tokens)[kept], np.asarray(held_out[i]["tokens"])[kept])
  guided = modes.main(override(config, sampler__guidance=1.0, sampler__name="exact"), workdir, "sample",
                    reference=reference(), num_samples=2, class_label="1,2")
  assert (np.asarray(guided["tokens"]) < 17).all() and guided["nfe"] >= 1


@pytest.mark.parametrize("network_draws", [1, 2])
def test_the_network_gradient_is_that_of_the_draws_it_uses(network_draws):
  """network_draws=1: the backbone's gradient is exactly that of draw 1's bound (the evaluation-mode
  terms, which use draw 1); 2: the mean of both draws' gradients, not that of draw 1 alone."""
  config = make_config(pathlib.Path("unused.txt"), **GENMD4, diffusion__genmd4__network_draws=network_draws)
  experiment = Experiment(config, modality.Text(20, 16), sharding.make_mesh(config.mesh))
  params = experiment.init_state(experiment.base_key)["params"]
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), params)  # non-zero head
  tokens = jax.random.randint(jax.random.key(2), (8, 16), 0, 20)
  batch = {"tokens": tokens, "token_mask": jnp.ones_like(tokens)}
  key = jax.random.key(3)

  def backbone_gradient(name, training):
    grads = jax.grad(lambda p: experiment._terms(p, batch, key, training=training)[name].sum())(params)
    return jax.tree.leaves(grads["backbone"])

  surrogate = backbone_gradient("surrogate", True)
  first_draw = backbone_gradient("loss", False)
  close = all(np.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(surrogate, first_draw))
  assert close == (network_draws == 1)


def test_the_parameter_count_includes_the_schedule(corpus_file):
  md4 = modes.main(make_config(corpus_file), None, "params", reference=reference())
  with_schedule = modes.main(make_config(corpus_file, **GENMD4), None, "params", reference=reference())
  assert with_schedule["params"] == md4["params"] + md4["vocab_size"]
