"""The two devices for adapting autoregressive weights (docs/method.md): shifted prediction (diffusion.shift,
core/shifted.py) and MD4's attention annealing (diffusion.anneal_steps), each against an exact property."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4_jax import models
from md4_jax.core import ar_likelihood, block_diffusion, shifted
from md4_jax.core.attention_masks import CAUSAL
from md4_jax.core.fused_head import token_nll
from md4_jax.core.schedules import EPS, get_schedule
from md4_jax.errors import UserError
from md4_jax.objectives.bd3 import BlockDiffusion
from md4_jax.objectives.md4 import MD4
from md4_jax.run import config_check
from tests.conftest import make_config, reference, sampler_settings
from tests.core.test_block_diffusion import V, random_network

L = 8


def unshift(y_BxL):
  """The inverse of shifted.shift_right up to z's last token, which becomes the mask id."""
  return jnp.concatenate([y_BxL[:, 1:], jnp.full_like(y_BxL[:, :1], V)], axis=1)


class ShiftsItsOwnOutputs:
  """A network that, fed shift_right(z), computes the wrapped one's outputs on z (last token masked): under
  diffusion.shift its output i scores token i exactly as the wrapped network's does unshifted."""

  def __init__(self, net):
    self.net = net

  def __call__(self, y_BxL, t_B, **context):
    return self.net(unshift(y_BxL), t_B, **context)

  def features(self, y_BxL, t_B, **context):
    return self.net.features(unshift(y_BxL), t_B, **context)

  def __getattr__(self, name):
    return getattr(self.net, name)


class LastMasked(ShiftsItsOwnOutputs):
  """The wrapped network with z's last token masked (the one a shifted network cannot read)."""

  def __call__(self, z_BxL, t_B, **context):
    return self.net(z_BxL.at[:, -1].set(V), t_B, **context)

  def features(self, z_BxL, t_B, **context):
    return self.net.features(z_BxL.at[:, -1].set(V), t_B, **context)


class Bare:
  """A plain denoise(z, t) callable (the path without a fused output layer)."""

  splits_head = False

  def __init__(self, net):
    self.net = net

  def __call__(self, z_BxL, t_B, **context):
    return self.net(z_BxL, t_B, **context)


def md4(shift: bool, **overrides):
  return MD4(make_config("unused.txt", diffusion__shift=shift, data__seq_len=L, **overrides), V)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("timesteps", [0, 10])
def test_the_shifted_bound_is_the_unshifted_bound_reindexed(fused, timesteps):
  net = random_network(L, time_conditioning=True)
  wrap = (lambda n: n) if fused else Bare
  x0 = jax.random.randint(jax.random.key(2), (6, L), 0, V)
  key = jax.random.key(3)
  terms = lambda objective, network: objective.terms(network, x0, key, token_mask_BxL=jnp.ones_like(x0),  # noqa: E731
                                                     timesteps=timesteps)
  shifted_terms = terms(md4(True), wrap(ShiftsItsOwnOutputs(net)))
  plain_terms = terms(md4(False), wrap(LastMasked(net)))
  assert float(jnp.sum(plain_terms["diffusion"])) > 0
  for name in ("diffusion", "loss"):
    np.testing.assert_allclose(shifted_terms[name], plain_terms[name], rtol=1e-6, atol=1e-6)
  # And it is a different function: the same network without the shift scores other outputs.
  assert not np.allclose(terms(md4(False), wrap(ShiftsItsOwnOutputs(net)))["diffusion"], plain_terms["diffusion"])


def test_shifted_sampling_runs_the_network_on_the_shifted_input():
  net = random_network(L, time_conditioning=True)
  settings = sampler_settings("ancestral", steps=6)
  z = jnp.full((4, L), V, jnp.int32).at[:, :2].set(1)
  draw = lambda objective, network, settings=settings: objective.sample(  # noqa: E731
      network, jax.random.key(5), z, settings, time_dependent=True, module=None)
  ours, theirs = draw(md4(True), ShiftsItsOwnOutputs(net)), draw(md4(False), LastMasked(net))
  for a, b in zip(ours, theirs):
    np.testing.assert_array_equal(a, b)
  # A cached parallel variant (an eval.samplers entry skips the config check) is refused where sampling starts.
  with pytest.raises(UserError, match="sampler.kv_cache='dual' is not supported with diffusion.shift=True"):
    draw(md4(True), net, sampler_settings("parallel", steps=6, kv_cache="dual"))


def test_bd3_blocks_of_one_shifted_are_the_autoregressive_model():
  """At L' = 1 the shifted noisy block j reads token j - 1 after the clean tokens before it: the AR network's
  input, under its causal mask. So each position's loss is the AR model's NLL, whatever z is, and the bound's
  expectation over the masks at any t is (1 - 2 eps) times the AR NLL for the linear schedule."""
  module = random_network(L, network_only=True)
  net = models.Network(module)
  x0 = jax.random.randint(jax.random.key(2), (5, L), 0, V)
  ar_nll = token_nll(ar_likelihood.next_token_logits(lambda z, t: module(z, t, mask=CAUSAL), x0, V), x0)
  for z in (x0, jnp.full_like(x0, V), jnp.where(jax.random.bernoulli(jax.random.key(4), 0.5, x0.shape), V, x0)):
    np.testing.assert_allclose(block_diffusion.token_nll_in_layout(net, z, x0, 1, shift_id=V), ar_nll,
                               rtol=1e-5, atol=1e-5)
  assert not np.allclose(block_diffusion.token_nll_in_layout(net, x0, x0, 1), ar_nll, atol=1e-3)  # unshifted
  schedule, t = get_schedule("linear"), 0.37
  all_masked = block_diffusion.terms_given(net, x0, jnp.full_like(x0, V), jnp.full((5, L), t), schedule,
                                           vocab_size=V, shift=True)
  # E over masks of sum_j w(t) 1[j masked] nll_j = w(t) (1 - alpha_t) sum_j nll_j; the all-masked draw gives the sum.
  expected = all_masked["diffusion"] * schedule.mask_prob(t)
  np.testing.assert_allclose(expected, (1 - 2 * EPS) * jnp.sum(ar_nll, axis=-1), rtol=1e-5)
  assert float(jnp.max(all_masked["loss"] - all_masked["diffusion"])) < L * 2 * EPS * np.log(V) + 1e-3


@pytest.mark.parametrize("kv_cache", ["none", "exact"])
def test_bd3_shifted_sampling_with_and_without_the_cache_agree(kv_cache):
  module = random_network(L, network_only=True)
  config = make_config("unused.txt", objective="bd3", diffusion__bd3__block_size=2, data__seq_len=L,
                       diffusion__shift=True)
  objective = BlockDiffusion(config, V)
  z = jnp.full((3, L), V, jnp.int32).at[:, :3].set(2)
  draw = lambda cache: jax.jit(lambda key: objective.sample(  # noqa: E731
      models.Network(module), key, z, sampler_settings("ancestral", steps=8, kv_cache=cache),
      time_dependent=False, module=module))(jax.random.key(7))
  cached, plain = draw(kv_cache), draw("none")
  for a, b in zip(cached, plain):
    np.testing.assert_array_equal(a, b)
  assert np.all(np.asarray(cached[0]) < V)


def test_bd3_shifted_first_block_reads_the_start_token():
  x0 = jnp.asarray([[1, 2, 3, 4, 0, 1]])
  z = jnp.asarray([[V, 2, V, 4, V, V]])
  np.testing.assert_array_equal(shifted.block_inputs(z, x0, 2, V), [[V, V, 2, V, 4, V]])
  np.testing.assert_array_equal(shifted.block_inputs(z, x0, 1, V), shifted.shift_right(x0, V))


def test_annealed_masks_grow_from_causal_to_bidirectional():
  objective = md4(False, diffusion__anneal_steps=100)
  key, length = jax.random.key(0), 64
  upper = ~np.asarray(CAUSAL.allowed(length))
  for step, share in ((0, 0.01), (49, 0.5), (98, 0.99)):
    allowed = np.asarray(objective.network_context(jnp.asarray(step), key, length)["mask"])
    assert allowed[np.asarray(CAUSAL.allowed(length))].all()  # never less than causal
    n = upper.sum()
    assert abs(allowed[upper].mean() - share) < 4 * np.sqrt(share * (1 - share) / n) + 1e-9
  assert np.asarray(objective.network_context(jnp.asarray(99), key, length)["mask"]).all()
  assert md4(False).network_context(jnp.asarray(0), key, length) == {}


def test_an_annealed_training_step_sees_its_mask_and_evaluation_does_not():
  """The training step's terms equal the terms under the step's drawn mask, passed by hand; evaluation's are the
  bidirectional network's."""
  from md4_jax.data.modality import Text  # noqa: PLC0415
  from md4_jax.engine import sharding  # noqa: PLC0415
  from md4_jax.engine.experiment import CONTEXT_SALT, Experiment  # noqa: PLC0415

  config = make_config("unused.txt", diffusion__anneal_steps=3, data__seq_len=L)
  experiment = Experiment(config, Text(V, L), sharding.make_mesh(config.mesh))
  state = experiment.init_state(experiment.base_key)
  params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(1), x.shape), state["params"])
  batch = {"tokens": jax.random.randint(jax.random.key(2), (8, L), 0, V), "token_mask": jnp.ones((8, L), jnp.int32)}
  key, step = jax.random.key(9), jnp.asarray(1)
  annealed = experiment._terms(params, batch, key, training=True, step=step)["loss"]
  mask = experiment.objective.network_context(step, jax.random.fold_in(key, CONTEXT_SALT), L)["mask"]
  assert not mask.all() and not np.array_equal(mask, CAUSAL.allowed(L))
  by_hand = experiment.objective.terms(
      models.Network(experiment._network(params, batch).module, dropout_key=jax.random.fold_in(key, 101),
                     context={"mask": mask}),
      batch["tokens"], key, token_mask_BxL=batch["token_mask"], timesteps=0, training=True)["loss"]
  np.testing.assert_allclose(annealed, by_hand, rtol=1e-6)
  bidirectional = experiment._terms(params, batch, key, training=True)["loss"]
  assert not np.allclose(annealed, bidirectional)


@pytest.mark.parametrize("overrides, message", [
    (dict(diffusion__anneal_steps=-1), "diffusion.anneal_steps=-1 must be >= 0"),
    (dict(objective="bd3", diffusion__anneal_steps=10), "diffusion.anneal_steps=10 has no effect on this run"),
    (dict(objective="ar", diffusion__shift=True), "diffusion.shift=True has no effect on this run"),
    (dict(diffusion__shift=True, sampler__name="parallel", sampler__kv_cache="dual"),
     "sampler.kv_cache='dual' is not supported with diffusion.shift=True"),
])
def test_bad_adaptation_keys_are_refused(overrides, message):
  with pytest.raises(UserError, match=message):
    config_check.validate(make_config("unused.txt", **overrides), reference(), "train")
