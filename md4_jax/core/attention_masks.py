"""Which keys each query may attend to: the layouts of the autoregressive baseline and of block diffusion, as
static descriptions (hashable: part of a compiled program) that give their [L, L] boolean matrix."""

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Mask:
  """kind "causal": key j <= query i. "block_causal": block(j) <= block(i), blocks of `block_size` positions.
  "block_diffusion": 2L positions, the noised sequence z (first L) and the clean one x (last L): z's block b sees
  z's block b and x's blocks before b; x's block b sees x's blocks up to b; x never sees z."""
  kind: str
  block_size: int = 1

  def allowed(self, length: int):
    """[L, L] bool: True where query i may attend to key j."""
    i, j = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
    if self.kind == "causal":
      return j <= i
    if self.kind == "block_causal":
      return j // self.block_size <= i // self.block_size
    if self.kind == "block_diffusion":
      half = length // 2
      block_i, block_j = (i % half) // self.block_size, (j % half) // self.block_size
      noised_i, noised_j = i < half, j < half
      return jnp.where(noised_i, jnp.where(noised_j, block_j == block_i, block_j < block_i),
                       ~noised_j & (block_j <= block_i))
    raise ValueError(f"unknown attention mask {self.kind!r}")


CAUSAL = Mask("causal")
