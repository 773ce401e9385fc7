"""The autoregressive baseline (`objective = "ar"`): exact next-token likelihood, left-to-right sampling.

The backbone runs causally (it must support it: the transformer does) and without a time input.
"""

import types

import jax.numpy as jnp

from md4_jax.core import ar_likelihood
from md4_jax.core.fused_head import token_nll
from md4_jax.objectives.base import Objective
from md4_jax.samplers import left_to_right


class Autoregressive(Objective):
  """Every position is a target, so the output layer runs at every position (the default capacity)."""

  name = "ar"
  exact = True  # --mode eval reports the exact likelihood: one draw, no T-step bounds
  network_requirements = types.MappingProxyType({"causal": True, "time_conditioning": False})

  def bound_name(self, timesteps: int) -> str:
    del timesteps
    return "exact likelihood (autoregressive)"

  def terms(self, net, x0_BxL, key, *, token_mask_BxL, timesteps: int, t_B=None, capacity_fraction: float = 1.0,
            groups: int = 1, training: bool = False) -> dict:
    del key, timesteps, t_B, capacity_fraction, groups, training  # nothing is drawn; every position is a target
    return ar_likelihood.nll_terms(net, x0_BxL, vocab_size=self.vocab_size, token_mask_BxL=token_mask_BxL)

  def conditional_loss(self, net, x0_BxL, key, *, scored_BxL, unknown_BxL, t_B):
    """Exact: the next-token NLL summed over the scored positions (causal: what follows them plays no part)."""
    del key, unknown_BxL, t_B
    logits_BxLxV = ar_likelihood.next_token_logits(net, x0_BxL, self.vocab_size)
    return jnp.sum(jnp.where(scored_BxL, token_nll(logits_BxLxV, x0_BxL), 0.0), axis=-1)

  def greedy_tokens(self, net, x0_BxL, *, scored_BxL, unknown_BxL):
    del scored_BxL, unknown_BxL
    return jnp.argmax(ar_likelihood.next_token_logits(net, x0_BxL, self.vocab_size), axis=-1)

  def sample(self, denoise, key, z_BxL, settings, *, time_dependent: bool, module):
    del time_dependent, module
    return left_to_right.sample(denoise, key, z_BxL, settings, vocab_size=self.vocab_size, return_order=True)


OBJECTIVE = Autoregressive
