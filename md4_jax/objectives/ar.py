"""The autoregressive baseline (`objective = "ar"`): exact next-token likelihood, left-to-right sampling.

The backbone runs causally (it must support it: the transformer does) and without a time input.
"""

from md4_jax.core import ar_likelihood
from md4_jax.samplers import left_to_right


class Autoregressive:

  name = "ar"
  exact = True  # --mode eval reports the exact likelihood: one draw, no T-step bounds
  network_requirements = {"causal": True, "time_conditioning": False}

  def __init__(self, config, vocab_size: int):
    self.config, self.vocab_size = config, vocab_size

  def capacity_fraction(self, rows: int, length: int) -> float:
    del rows, length
    return 1.0  # every position is a target

  def bound_name(self, timesteps: int) -> str:
    del timesteps
    return "exact likelihood (autoregressive)"

  def terms(self, net, x0_BxD, key, *, token_mask_BxD, timesteps: int, t_B=None, capacity_fraction: float = 1.0,
            groups: int = 1, training: bool = False) -> dict:
    del key, timesteps, t_B, capacity_fraction, groups, training  # nothing is drawn; every position is a target
    return ar_likelihood.nll_terms(net, x0_BxD, vocab_size=self.vocab_size, token_mask_BxL=token_mask_BxD)

  def sample(self, denoise, key, z_BxD, settings, *, time_dependent: bool, module=None):
    del time_dependent, module
    return left_to_right.sample(denoise, key, z_BxD, settings, vocab_size=self.vocab_size, return_order=True)
