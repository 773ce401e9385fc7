"""Shifted prediction (diffusion.shift, docs/method.md): the network reads the sequence one place to the right,
behind a start token (the mask id, as the autoregressive baseline's input), so its output at position i, whose
input is token i - 1, scores token i: where an autoregressive head was trained to put the next token (Dream,
DiffuLLaMA, Fast-dLLM v2 adapt AR checkpoints this way).

It is a change of the network's input only: the bound is the same sum over masked positions of -log p(x_i | z),
re-indexed. What the network no longer reads is z's last token (its slot holds the start token); block diffusion
gives each noisy block its previous block's last clean token in that first slot (`block_inputs`).
"""

import jax.numpy as jnp


def shift_right(x_BxL, start_id: int):
  """[start, x_0, ..., x_{L-2}]."""
  return jnp.concatenate([jnp.full_like(x_BxL[:, :1], start_id), x_BxL[:, :-1]], axis=1)


def block_inputs(z_BxL, x0_BxL, block_size: int, start_id: int):
  """Block diffusion's shifted noisy stream: shift_right(z), except that each block's first slot holds the clean
  token before the block (the start id for the first block), which the block's context already holds clean. At
  block size 1 this is shift_right(x0): the autoregressive input."""
  first_BxL = (jnp.arange(z_BxL.shape[1]) % block_size == 0)[None]
  return jnp.where(first_BxL, shift_right(x0_BxL, start_id), shift_right(z_BxL, start_id))


class Shifted:
  """A network (`models.Network` or a bare `denoise(z_BxL, t_B)`) that reads its input shifted right: same call
  protocol, so objectives and samplers take it unchanged. Everything else (the output layer, the module) is the
  wrapped network's."""

  def __init__(self, net, start_id: int):
    self.net, self.start_id = net, start_id

  def __call__(self, z_BxL, t_B, **context):
    return self.net(shift_right(z_BxL, self.start_id), t_B, **context)

  def features(self, z_BxL, t_B, **context):
    return self.net.features(shift_right(z_BxL, self.start_id), t_B, **context)

  def __getattr__(self, name):
    return getattr(self.net, name)
