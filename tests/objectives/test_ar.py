"""The autoregressive baseline: an exact, normalised likelihood, left-to-right sampling, and a full run."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from md4_jax.core import ar_likelihood
from md4_jax.models.transformer import Transformer
from md4_jax.run import modes
from md4_jax.samplers import left_to_right
from tests.conftest import make_config, reference, sampler_settings, transformer_config
from tests.samplers.test_samplers import INITIAL, MASK, TRANSITION, L, V, chi_square_p_value

SEQUENCES = jnp.asarray(list(itertools.product(range(3), repeat=3)), jnp.int32)  # all 27 sequences, V=3, L=3


def random_network(causal: bool):
  network = Transformer(transformer_config(vocab_size=3, seq_len=3, num_layers=1, width=16, num_heads=2,
                                          time_conditioning=False, causal=causal), nnx.Rngs(0))
  graphdef, params = nnx.split(network)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))  # the head is zero at init: make it say something
  return nnx.merge(graphdef, jax.tree.unflatten(treedef, [x + 0.5 * jax.random.normal(k, x.shape)
                                                          for x, k in zip(leaves, keys)]))


@pytest.mark.slow
def test_the_likelihood_is_normalised_over_all_sequences():
  nll = ar_likelihood.nll_terms(random_network(causal=True), SEQUENCES, vocab_size=3)["loss"]
  assert abs(float(jnp.sum(jnp.exp(-nll))) - 1.0) < 1e-5
  # Without the causal mask the model sees the token it predicts: no longer a distribution.
  cheating = ar_likelihood.nll_terms(random_network(causal=False), SEQUENCES, vocab_size=3)["loss"]
  assert abs(float(jnp.sum(jnp.exp(-cheating))) - 1.0) > 1e-2


def test_padding_is_excluded_from_the_likelihood():
  network = random_network(causal=True)
  full = ar_likelihood.nll_terms(network, SEQUENCES[:4], vocab_size=3)
  padded = ar_likelihood.nll_terms(network, SEQUENCES[:4], vocab_size=3,
                                    token_mask_BxL=jnp.array([[1, 1, 0]] * 4))
  np.testing.assert_array_equal(padded["num_tokens"], 2)
  assert np.all(np.asarray(padded["loss"]) < np.asarray(full["loss"]))


def markov_network(input_BxL, t_B):
  """A causal 'network' for the test chain: the input at n is x_{n-1} (or the start id at n = 0)."""
  del t_B
  return jnp.log(jnp.where((input_BxL == MASK)[..., None], jnp.asarray(INITIAL),
                           jnp.asarray(TRANSITION)[jnp.minimum(input_BxL, V - 1)]))


@pytest.fixture(scope="module")
def ar_sampler():
  return jax.jit(lambda key, z: left_to_right.sample(markov_network, key, z, sampler_settings(), vocab_size=V))


def test_left_to_right_samples_follow_the_chain(ar_sampler):
  tokens, nfe = ar_sampler(jax.random.key(0), jnp.full((5000, L), MASK, jnp.int32))
  assert chi_square_p_value(tokens) > 1e-3 and int(nfe) == L


def test_a_prompt_is_kept_and_costs_no_calls(ar_sampler):
  prompt = jnp.array([[2, 3] + [MASK] * (L - 2)] * 4, jnp.int32)
  tokens, nfe = ar_sampler(jax.random.key(1), prompt)
  np.testing.assert_array_equal(np.asarray(tokens)[:, :2], [[2, 3]] * 4)
  assert np.all(np.asarray(tokens) < V) and int(nfe) == L - 2


def test_ar_run_trains_evaluates_and_samples(tmp_path, corpus_file):
  config = make_config(corpus_file, objective="ar")
  result = modes.main(config, tmp_path / "run", "train", reference=reference())
  assert np.isfinite(result["eval/bpt"]) and result["eval/prior_bpt"] == 0.0
  evaluated = modes.main(config, tmp_path / "run", "eval", reference=reference())
  assert evaluated["eval/bpt"] == result["eval/bpt"]  # exact likelihood: no random draws
  step = max(int(p.stem.split("_")[1]) for p in (tmp_path / "run" / "eval").glob("step_*.json"))
  assert json.loads((tmp_path / "run" / "eval" / f"step_{step}.json").read_text())["bound"] == \
      "exact likelihood (autoregressive)"
  sampled = modes.main(config, tmp_path / "run", "sample", reference=reference(), prompt="the", num_samples=2)
  assert all(text.startswith("the") and len(text) == 16 for text in sampled["samples"])
  assert sampled["nfe"] == 16 - 3
