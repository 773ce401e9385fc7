"""The autoregressive baseline's likelihood (`objective = "ar"`): exact next-token NLL (its left-to-right
sampler is samplers/left_to_right.py).

The network is the same transformer with causal attention. Its input is the sequence shifted right by
one, with the mask id (= vocab_size, an embedding row the model has anyway) as the start token, so the
output at position n is p(x_n | x_<n). Time plays no part (t is fed as 0).
"""

import jax.numpy as jnp

from md4_jax.core import diffusion
from md4_jax.core.shifted import shift_right


def next_token_logits(network, x_BxL, vocab_size: int):
  """logits_BxLxV: position n predicts x_n from x_<n."""
  return network(shift_right(x_BxL, vocab_size), jnp.zeros((x_BxL.shape[0],)))


def nll_terms(network, x0_BxL, *, vocab_size: int, token_mask_BxL=None) -> dict:
  """Exact negative log-likelihood per example in nats, in the same dict as `diffusion.elbo_terms`
  (`loss` = `diffusion` = the NLL; no reconstruction or prior term). Padding is excluded."""
  if token_mask_BxL is None:
    token_mask_BxL = jnp.ones_like(x0_BxL)
  if getattr(network, "splits_head", False):  # a backbone (not a bare callable): the output layer fused with the loss
    h_BxLxD = network.features(shift_right(x0_BxL, vocab_size), jnp.zeros((x0_BxL.shape[0],)))
    nll_BxL = network.head_loss(h_BxLxD.reshape(x0_BxL.size, -1), x0_BxL.reshape(-1)).reshape(x0_BxL.shape)
  else:
    nll_BxL = diffusion.token_nll(next_token_logits(network, x0_BxL, vocab_size), x0_BxL)
  loss_B = jnp.sum(nll_BxL * token_mask_BxL, axis=-1)
  zeros_B = jnp.zeros_like(loss_B)
  return {"loss": loss_B, "diffusion": loss_B, "reconstruction": zeros_B, "prior": zeros_B,
          "num_tokens": jnp.sum(token_mask_BxL, axis=-1).astype(jnp.float32)}
