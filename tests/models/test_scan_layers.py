"""model.transformer.scan_layers: the scanned transformer is the unrolled one (same function of the same parameters,
stacked), its program does not grow with depth, and its stacked vectors are not weight-decayed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from md4_jax.data import modality
from md4_jax.engine import experiment, sharding
from md4_jax.models.transformer import Transformer
from tests import tiny_config
from tests.conftest import transformer_config

VOCAB, LENGTH, LAYERS = 11, 12, 3


def perturbed_and_stacked(params: dict, scale: float, seed: int) -> tuple[dict, dict]:
  """(unrolled pure params + distinct noise, the same with the blocks stacked as a scanned model holds them).

  Zero-initialised adaLN and output layers would hide a wrong layer order (or every difference)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  params = jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  return params, {**params, "blocks": jax.tree.map(lambda *layers: jnp.stack(layers), *params["blocks"].values())}


def models(**overrides):
  """(unrolled, scanned) transformers holding the same parameters: the scanned one's are the unrolled
  blocks' stacked along a leading axis."""
  cfg = dict(vocab_size=VOCAB, seq_len=LENGTH, num_layers=LAYERS, width=32, num_heads=2, **overrides)
  unrolled = Transformer(transformer_config(**cfg), nnx.Rngs(0))
  scanned = Transformer(transformer_config(**cfg, scan_layers=True), nnx.Rngs(1))
  params, stacked = perturbed_and_stacked(nnx.to_pure_dict(nnx.state(unrolled)), 0.1, seed=2)
  nnx.update(unrolled, params)
  scanned_state = nnx.state(scanned)
  nnx.replace_by_pure_dict(scanned_state, stacked)  # fails unless the stacked tree has the scanned shape
  nnx.update(scanned, scanned_state)
  return unrolled, scanned


def inputs():
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.integers(0, VOCAB + 1, (4, LENGTH)), jnp.int32),
          jnp.asarray(rng.uniform(size=4), jnp.float32))


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"remat": "block"}, {"causal": True, "time_conditioning": False},
                                       {"scan_unroll": 0}, {"scan_unroll": 2, "remat": "block"}],
                         ids=["plain", "remat", "causal", "unrolled", "two_per_iteration"])
def test_scanned_layers_compute_the_unrolled_function_and_gradient(overrides):
  unrolled, scanned = models(**overrides)
  z, t = inputs()

  def logits_and_grads(model):  # jitted: eager op-by-op calls would dominate the test's time
    graphdef, params = nnx.split(model)
    loss = lambda p: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(z, t)))  # noqa: E731
    logits, grads = jax.jit(lambda p: (nnx.merge(graphdef, p)(z, t), jax.grad(loss)(p)))(params)
    return logits, nnx.to_pure_dict(grads)

  (unrolled_logits, unrolled_grads), (scanned_logits, scanned_grads) = map(logits_and_grads, (unrolled, scanned))
  np.testing.assert_allclose(scanned_logits, unrolled_logits, rtol=1e-5, atol=1e-5)
  for i in range(LAYERS):
    layer_i = jax.tree.map(lambda stacked: stacked[i], scanned_grads["blocks"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 layer_i, unrolled_grads["blocks"][i])  # layer i's gradient lands in slice i
  np.testing.assert_allclose(scanned_grads["embed"], unrolled_grads["embed"], rtol=1e-4, atol=1e-5)


def test_scan_unroll_zero_is_straight_line_code_over_the_stacked_parameters():
  """scan_unroll=0: no loop left in the forward or backward program (nothing stacked to copy back out);
  the rolled default has its loops."""
  def program(scan_unroll):
    model = Transformer(transformer_config(VOCAB, LENGTH, num_layers=LAYERS, width=32, num_heads=2,
                                           scan_layers=True, scan_unroll=scan_unroll), nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    z, t = inputs()
    loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(z, t))  # noqa: E731
    return jax.jit(jax.value_and_grad(loss)).lower(params).as_text()

  assert program(1).count("stablehlo.while") >= 2
  assert program(0).count("stablehlo.while") == 0


def test_weight_decay_skips_stacked_vectors_as_it_skips_unrolled_ones():
  unrolled, scanned = models()
  unrolled_mask, scanned_mask = (experiment.decays(nnx.split(m)[1]) for m in (unrolled, scanned))
  assert scanned_mask["blocks"]["attn_norm"]["scale"] is False  # [layers, D]: a vector per layer
  assert scanned_mask["blocks"]["mlp"]["gate"]["kernel"] is True
  jax.tree.map(lambda a, b: np.testing.assert_equal(a, b), scanned_mask["blocks"], unrolled_mask["blocks"][0])
  assert {k: v for k, v in scanned_mask.items() if k != "blocks"} == \
      {k: v for k, v in unrolled_mask.items() if k != "blocks"}


def _train_step_program(num_layers, scan_layers):
  config = tiny_config.get_config()
  config.model.transformer.num_layers, config.model.transformer.scan_layers = num_layers, scan_layers
  mesh = sharding.make_mesh(config.mesh)
  built = experiment.Experiment(config, modality.Text(VOCAB, LENGTH), mesh)
  shape = (config.train.batch_size, LENGTH)
  batch = {key: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding.batch_sharding(mesh))
           for key in ("tokens", "token_mask")}
  return built.train_step.lower(built.abstract_state, batch).as_text()


def test_the_scanned_train_step_program_does_not_grow_with_depth():
  scanned = [len(_train_step_program(layers, True)) for layers in (2, 6)]
  unrolled = [len(_train_step_program(layers, False)) for layers in (2, 6)]
  assert unrolled[1] > 1.5 * unrolled[0]  # the check can see growth
  assert abs(scanned[1] - scanned[0]) < 0.01 * scanned[0]


def test_a_workdir_from_before_scan_layers_resumes_only_unrolled():
  """Its checkpoints hold the unrolled layout: a config that now scans is refused (naming the key), the
  workdir's own value is accepted."""
  from configs import base
  from md4_jax.errors import UserError
  from md4_jax.run import config_check
  reference = base.get_config().to_dict()
  saved = base.get_config().to_dict()
  del saved["model"]["transformer"]["scan_layers"]  # a config.json written before the key existed
  config = base.get_config()
  config.model.transformer.scan_layers = True
  with pytest.raises(UserError, match=r"model.transformer.scan_layers: False in the workdir, True now"):
    config_check.check_resumable(saved, config, "/runs/old", reference)
  config.model.transformer.scan_layers = False
  config_check.check_resumable(saved, config, "/runs/old", reference)


def test_a_scanned_run_may_change_scan_unroll_on_resume():
  """Same checkpoint layout: a workdir written with the rolled loop (or before the key existed) resumes
  unrolled, and back."""
  from configs import base
  from md4_jax.run import config_check
  reference = base.get_config().to_dict()
  saved = base.get_config().to_dict()
  saved["model"]["transformer"]["scan_layers"] = True
  config = base.get_config()
  config.model.transformer.scan_layers, config.model.transformer.scan_unroll = True, 0
  config_check.check_resumable(saved, config, "/runs/old", reference)
  del saved["model"]["transformer"]["scan_unroll"]
  config_check.check_resumable(saved, config, "/runs/old", reference)
  saved["model"]["transformer"]["scan_unroll"], config.model.transformer.scan_unroll = 0, 1
  config_check.check_resumable(saved, config, "/runs/old", reference)


@pytest.mark.slow
def test_the_samplers_run_a_scanned_model_and_draw_what_the_unrolled_one_draws():
  """The samplers call the network inside their own loops (a regression: nnx.scan refused a module made
  outside that trace). Same parameters, same key: the same tokens, for a loop per step and per event."""
  from md4_jax.engine import generate
  experiments = {}
  for scan in (False, True):
    config = tiny_config.get_config()
    config.model.transformer.num_layers, config.model.transformer.scan_layers, config.sampler.name = 2, scan, "exact"
    experiments[scan] = experiment.Experiment(config, modality.Text(VOCAB, LENGTH), sharding.make_mesh(config.mesh))
  unrolled_params = experiments[False].init_state(jax.random.key(3))["ema_params"]
  pure, stacked = perturbed_and_stacked(nnx.to_pure_dict(unrolled_params), 0.5, seed=6)
  nnx.replace_by_pure_dict(unrolled_params, pure)
  scanned_params = experiments[True].init_state(jax.random.key(4))["ema_params"]
  nnx.replace_by_pure_dict(scanned_params, stacked)
  for name in ("exact", "ancestral"):
    drawn = []
    for scan, params in ((False, unrolled_params), (True, scanned_params)):
      sampling = experiments[scan].with_overrides("sampler", {"name": name, "steps": 8})
      start = generate.unconditional_start(sampling, 4)
      drawn.append(generate.draw_samples(sampling, params, jax.random.key(5), start).tokens)
    assert (drawn[0] < VOCAB).all()
    np.testing.assert_array_equal(drawn[1], drawn[0])
