"""The ancestral sampler on analytic denoisers."""

import jax
import jax.numpy as jnp
import numpy as np

from md4_jax import sampling
from md4_jax.schedules import get_schedule

V = 5


def test_time_grids():
  np.testing.assert_allclose(sampling.time_grid(4, "uniform"), [0, 0.25, 0.5, 0.75, 1.0])
  cosine = np.asarray(sampling.time_grid(4, "cosine"))
  assert cosine[0] == 0 and cosine[-1] == 1 and np.all(np.diff(cosine) > 0)
  # Fewer tokens unmask early: the last step (near t=1) is shorter than the uniform one.
  assert cosine[-1] - cosine[-2] < 0.25


def test_no_mask_survives_and_a_deterministic_denoiser_is_reproduced():
  target = jnp.array([3, 1, 4, 1, 0, 2])
  denoise = lambda z, t: 50.0 * jax.nn.one_hot(jnp.broadcast_to(target, z.shape), V)  # noqa: E731
  for steps in (1, 4, 64):
    tokens, nfe = sampling.ancestral_sample(denoise, jax.random.key(0), get_schedule("linear"), batch_size=3,
                                            length=6, vocab_size=V, steps=steps)
    assert nfe == steps
    np.testing.assert_array_equal(tokens, jnp.broadcast_to(target, (3, 6)))


def test_independent_tokens_follow_the_model_distribution():
  probs = jnp.array([0.1, 0.2, 0.3, 0.4, 0.0])
  denoise = lambda z, t: jnp.broadcast_to(jnp.log(probs + 1e-30), z.shape + (V,))  # noqa: E731
  tokens, _ = sampling.ancestral_sample(denoise, jax.random.key(1), get_schedule("cosine"), batch_size=500,
                                        length=40, vocab_size=V, steps=32)
  freq = np.bincount(np.asarray(tokens).ravel(), minlength=V) / tokens.size
  n = tokens.size
  assert np.all(np.abs(freq - probs) < 5 * np.sqrt(probs * (1 - probs) / n) + 1e-9)
