"""The jitted train step's options: remat, bfloat16 compute, gradient accumulation, no implicit transfers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from md4_jax.data import modality
from md4_jax.engine import sharding
from md4_jax.engine.experiment import Experiment
from md4_jax.run import loop, modes
from tests import tiny_config
from tests.conftest import make_config, override, reference

VOCAB = 28


def experiment(**overrides) -> Experiment:
  config = tiny_config.get_config()
  override(config, **overrides)
  return Experiment(config, modality.Text(VOCAB, config.data.seq_len), sharding.make_mesh(config.mesh, jax.devices()[:1]))


def batch(seed=0, rows=8):
  rng = np.random.default_rng(seed)
  return {"tokens": jnp.asarray(rng.integers(0, VOCAB, (rows, 16)), jnp.int32),
          "token_mask": jnp.ones((rows, 16), jnp.int32)}


@pytest.fixture(scope="module")
def float32_step():
  plain = experiment()
  state = plain.init_state(plain.base_key)
  params = jax.tree.map(jnp.copy, state["params"])
  new_state, metrics = plain.train_step(state, batch())
  return plain, params, new_state, metrics


def test_remat_changes_memory_not_results(float32_step):
  _, _, expected_state, expected = float32_step
  remat = experiment(model__remat="block")
  state, metrics = remat.train_step(remat.init_state(remat.base_key), batch())
  np.testing.assert_allclose(metrics["loss"], expected["loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(expected_state["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_bfloat16_computes_in_bfloat16_and_keeps_float32_state(float32_step):
  _, _, _, expected = float32_step
  half = experiment(model__dtype="bfloat16")
  state = half.init_state(half.base_key)
  jaxpr = str(jax.make_jaxpr(half._train_step)(state, batch()))
  assert "bf16[8,16,2,16]" in jaxpr  # attention projections [B, L, H, K] run in bfloat16
  state, metrics = half.train_step(state, batch())
  assert {leaf.dtype for leaf in jax.tree.leaves(state)} <= {jnp.dtype("float32"), jnp.dtype("int32")}
  logits = nnx.merge(half.graphdef, state["params"])(batch()["tokens"], jnp.full((8,), 0.5))
  assert logits.dtype == jnp.float32  # so the softmax and the loss are float32
  np.testing.assert_allclose(metrics["loss"], expected["loss"], rtol=2e-2)


def test_grad_accumulation_sums_microbatch_gradients(float32_step):
  plain, params, _, _ = float32_step
  accum = experiment(train__grad_accum=2)
  data, key = batch(seed=1), jax.random.key(5)
  grads, per_token, _ = jax.jit(accum._accumulated_grads)(params, data, key)
  total = jnp.sum(data["token_mask"]).astype(jnp.float32)
  expected_grads, expected_loss = None, 0.0
  for i in range(2):  # microbatch i: rows i, i + 2, ...; key fold_in(key, i)
    micro = jax.tree.map(lambda x: x[i::2], data)
    g, sums = jax.jit(plain._loss_and_grads)(params, micro, jax.random.fold_in(key, i), total)
    expected_grads = g if expected_grads is None else jax.tree.map(jnp.add, expected_grads, g)
    expected_loss += sums["loss"] / total
  np.testing.assert_allclose(per_token["loss"], expected_loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_an_implicit_transfer_in_the_train_loop_is_an_error(tmp_path, corpus_file, monkeypatch):
  # Every training run executes its steps under jax.transfer_guard("disallow") (the end-to-end runs pass);
  # here the batch upload is made implicit, and the guard must stop it.
  monkeypatch.setattr(loop.sharding, "global_batch", lambda local, mesh: jax.tree.map(jnp.asarray, local))
  with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
    modes.main(make_config(corpus_file, train__num_steps=2), tmp_path / "run", "train", reference=reference())
