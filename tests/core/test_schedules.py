"""Each schedule: endpoints, monotonicity, dalpha = grad(alpha), weight = dalpha / (1 - alpha)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from md4_jax.core.schedules import EPS, get_schedule

NAMES = ["linear", "cosine", "poly2", "poly3", "poly0.5", "geometric"]
T = jnp.linspace(0.0, 1.0, 201)
T_INTERIOR = T[1:-1]


@pytest.mark.parametrize("name", NAMES)
def test_endpoints_and_monotone(name):
  schedule = get_schedule(name)
  alpha = np.asarray(schedule.alpha(T))
  assert alpha[0] == pytest.approx(1.0, abs=2e-4)
  assert alpha[-1] == pytest.approx(0.0, abs=2e-4)
  assert np.all(np.diff(alpha) < 0)
  assert np.all((alpha > 0) & (alpha < 1))


@pytest.mark.parametrize("name", NAMES)
def test_dalpha_is_the_derivative(name):
  schedule = get_schedule(name)
  autodiff = jax.vmap(jax.grad(schedule.alpha))(T_INTERIOR)
  np.testing.assert_allclose(schedule.dalpha(T_INTERIOR), autodiff, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_weight_and_mask_prob(name):
  # In float64, 1 - alpha has no cancellation, so it checks the float32-safe forms exactly.
  schedule = get_schedule(name)
  with jax.enable_x64(True):
    t = jnp.linspace(0.0, 1.0, 201, dtype=jnp.float64)[1:-1]
    one_minus_alpha = 1.0 - schedule.alpha(t)
    np.testing.assert_allclose(schedule.mask_prob(t), one_minus_alpha, rtol=1e-10)
    np.testing.assert_allclose(schedule.weight(t), schedule.dalpha(t) / one_minus_alpha, rtol=1e-10)
  assert np.all(schedule.weight(T_INTERIOR) < 0)


@pytest.mark.parametrize("name, power", [("linear", 1.0), ("poly2", 2.0), ("poly3", 3.0)])
def test_polynomial_weight_is_minus_k_over_t(name, power):
  # docs/method.md: for poly k the weight is -k/t before eps; with eps it is exactly the expression below.
  t = jnp.linspace(0.1, 1.0, 10)
  weight = get_schedule(name).weight(t)
  exact = -power * t ** (power - 1) * (1 - 2 * EPS) / ((1 - 2 * EPS) * t**power + EPS)
  np.testing.assert_allclose(weight, exact, rtol=1e-5)
  np.testing.assert_allclose(weight, -power / t, rtol=EPS / 0.1**power + 3 * EPS)


def test_cosine_analytic_value():
  # a(1/2) = 1 - cos(pi/4).
  value = get_schedule("cosine").alpha(jnp.float32(0.5))
  assert float(value) == pytest.approx((1 - 2 * EPS) * (1 - np.cos(np.pi / 4)) + EPS, rel=1e-6)


@pytest.mark.parametrize("name", ["poly", "poly-1", "poly0", "quadratic", "Linear", ""])
def test_unknown_names_are_rejected(name):
  with pytest.raises(ValueError, match="unknown masking schedule"):
    get_schedule(name)
