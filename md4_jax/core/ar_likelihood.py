"""The autoregressive baseline (`objective = "ar"`): exact next-token likelihood and left-to-right sampling.

The network is the same transformer with causal attention. Its input is the sequence shifted right by
one, with the mask id (= vocab_size, an embedding row the model has anyway) as the start token, so the
output at position n is p(x_n | x_<n). Time plays no part (t is fed as 0).
"""

import jax
import jax.numpy as jnp

from md4_jax import samplers
from md4_jax.core import diffusion


def shift_right(x_BxL, start_id: int):
  return jnp.concatenate([jnp.full_like(x_BxL[:, :1], start_id), x_BxL[:, :-1]], axis=1)


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


def sample(network, key, z_BxL, settings: samplers.Settings, *, vocab_size: int, return_order: bool = False):
  """Fills z's mask ids left to right, each from p(x_n | x_<n) after temperature / top-k / top-p.

  Known tokens are kept and condition every later position (the model cannot see to its right, so
  a token after a gap does not inform the gap). A column with nothing to fill costs no call.
  Returns (tokens_BxL, NFE), and with `return_order` the position + 1 at which each token was filled
  (0: given), as `samplers.sample` does.
  """
  z_BxL = jnp.asarray(z_BxL, jnp.int32)

  def position(n, carry):
    z_BxL, nfe = carry
    to_fill_B = z_BxL[:, n] == vocab_size

    def fill():
      logits_BxV = next_token_logits(network, z_BxL, vocab_size)[:, n].astype(jnp.float32)
      tokens_B = samplers.categorical(jax.random.fold_in(key, n), samplers.process_logits(logits_BxV, settings))
      return z_BxL.at[:, n].set(jnp.where(to_fill_B, tokens_B, z_BxL[:, n]))

    needed = jnp.any(to_fill_B)
    return jax.lax.cond(needed, fill, lambda: z_BxL), nfe + needed.astype(jnp.int32)

  tokens_BxL, nfe = jax.lax.fori_loop(0, z_BxL.shape[1], position, (z_BxL, jnp.zeros((), jnp.int32)))
  if not return_order:
    return tokens_BxL, nfe
  return tokens_BxL, nfe, jnp.where(z_BxL == vocab_size, jnp.arange(1, z_BxL.shape[1] + 1), 0)
