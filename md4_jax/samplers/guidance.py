"""Classifier-free guidance for class-conditional models: a denoise callable mixing two predictions."""

import jax
import jax.numpy as jnp


def guided(denoise_labelled, label_B, null_B, scale: float):
  """Classifier-free guidance: a `denoise(z, t)` whose log-probabilities are
  (1 + w) log p(x | z, label) - w log p(x | z, null class), renormalised by the sampler.

  `denoise_labelled(z, t, label)` is the class-conditional network; both predictions come from one
  call over the doubled batch (one network call in NFE). w = 0 gives the conditional model itself.
  """

  def denoise(z_BxL, t_B):
    logits = denoise_labelled(jnp.concatenate([z_BxL, z_BxL]), jnp.concatenate([t_B, t_B]),
                              jnp.concatenate([label_B, null_B]))
    conditional, unconditional = jnp.split(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), 2)
    return (1.0 + scale) * conditional - scale * unconditional

  return denoise
