"""The autoregressive baseline's sampler: fills masked positions left to right from p(x_n | x_<n)."""

import jax
import jax.numpy as jnp

from md4_jax.core.ar_likelihood import next_token_logits
from md4_jax.samplers.draws import Settings, categorical, process_logits


def sample(network, key, z_BxL, settings: Settings, *, vocab_size: int, return_order: bool = False):
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
      tokens_B = categorical(jax.random.fold_in(key, n), process_logits(logits_BxV, settings))
      return z_BxL.at[:, n].set(jnp.where(to_fill_B, tokens_B, z_BxL[:, n]))

    needed = jnp.any(to_fill_B)
    return jax.lax.cond(needed, fill, lambda: z_BxL), nfe + needed.astype(jnp.int32)

  tokens_BxL, nfe = jax.lax.fori_loop(0, z_BxL.shape[1], position, (z_BxL, jnp.zeros((), jnp.int32)))
  if not return_order:
    return tokens_BxL, nfe
  return tokens_BxL, nfe, jnp.where(z_BxL == vocab_size, jnp.arange(1, z_BxL.shape[1] + 1), 0)
