"""The transformer's residual block: attention (grouped-query, optional q/k/v biases and per-head q/k norms, as
the Llama and Qwen families have them), the GLU MLP and the adaLN-zero modulations of a time-conditioned model.

The configuration it reads is transformer.TransformerConfig.
"""

import jax.numpy as jnp
from flax import nnx

from md4_jax.models.attention import CAUSAL, Mask, attention, attention_kernel, cached_attention
from md4_jax.models.layers import Dense, RMSNorm, rope, silu_glu


def repeat_kv(x_BxLxGxK, repeats: int):
  """Grouped-query attention's keys or values for every query head: kv head g serves query heads g r .. g r + r - 1
  (the layout Llama's and Qwen's weights assume)."""
  return x_BxLxGxK if repeats == 1 else jnp.repeat(x_BxLxGxK, repeats, axis=2)


class Attention(nnx.Module):
  """Multi-head attention with num_kv_heads key / value heads (grouped-query; = num_heads: ordinary)."""

  def __init__(self, cfg, rngs):
    heads, kv_heads, head_dim = cfg.num_heads, cfg.kv_heads, cfg.head_size
    self.query = Dense((cfg.width,), (heads, head_dim), ("embed", "heads", "kv"), rngs, bias=cfg.qkv_bias)
    self.key = Dense((cfg.width,), (kv_heads, head_dim), ("embed", "heads", "kv"), rngs, bias=cfg.qkv_bias)
    self.value = Dense((cfg.width,), (kv_heads, head_dim), ("embed", "heads", "kv"), rngs, bias=cfg.qkv_bias)
    self.out = Dense((heads, head_dim), (cfg.width,), ("heads", "kv", "embed"), rngs)
    # Qwen3: RMSNorm over each head's queries and keys, before the rotation.
    self.query_norm = RMSNorm(head_dim, rngs, ("kv",), cfg.norm_eps) if cfg.qk_norm else None
    self.key_norm = RMSNorm(head_dim, rngs, ("kv",), cfg.norm_eps) if cfg.qk_norm else None
    self.use_rope, self.rope_theta, self.mask = cfg.positions == "rope", cfg.rope_theta, CAUSAL if cfg.causal else None
    self.repeats = heads // kv_heads
    self.kernel = attention_kernel(cfg.attention, cfg.dtype, head_dim)

  def __call__(self, x_BxLxD, positions_L=None, mask: Mask | None = None, context=None):
    """mask: this call's (block diffusion's layouts), else the configured one (causal or none). context: (cached
    keys, values [B, S, G, K], visible_S), a sampling cache's pass: the queries see each other (bidirectionally)
    and the cached positions where visible_S. Returns (out_BxLxD, this call's (keys, values) [B, L, G, K])."""
    q, k, v = self.query(x_BxLxD), self.key(x_BxLxD), self.value(x_BxLxD)  # [B, L, H or G, K]
    if self.query_norm is not None:
      q, k = self.query_norm(q), self.key_norm(k)
    if self.use_rope:
      q, k = rope(q, positions_L, self.rope_theta), rope(k, positions_L, self.rope_theta)
    every_k, every_v = repeat_kv(k, self.repeats), repeat_kv(v, self.repeats)
    if context is None:
      mask = self.mask if mask is None else mask  # an array mask (annealing) has no truth value: no `or`
      return self.out(attention(q, every_k, every_v, mask=mask, kernel=self.kernel)), (k, v)
    cached_k, cached_v, visible_S = context
    return self.out(cached_attention(q, every_k, every_v, repeat_kv(cached_k, self.repeats),
                                     repeat_kv(cached_v, self.repeats), visible_S)), (k, v)


class GluMlp(nnx.Module):

  def __init__(self, cfg, rngs):
    hidden = cfg.hidden
    self.gate = Dense((cfg.width,), (hidden,), ("embed", "mlp"), rngs)
    self.up = Dense((cfg.width,), (hidden,), ("embed", "mlp"), rngs)
    self.down = Dense((hidden,), (cfg.width,), ("mlp", "embed"), rngs)

  def __call__(self, x):
    return self.down(silu_glu(self.gate(x), self.up(x)))


def modulation(cfg, count: int, rngs) -> Dense:
  """adaLN-zero: `count` shift / scale / gate vectors [count, D] from the condition, zero at init. From a
  narrow condition (cond_dim) it has a bias, as in the reference code and DiT; the full-width layout has none."""
  if cfg.cond_dim:
    return Dense((cfg.cond_dim,), (count, cfg.width), (None, None, "embed_out"), rngs, zero_init=True, bias=True)
  return Dense((cfg.width,), (count, cfg.width), ("embed", None, "embed_out"), rngs, zero_init=True)


class Block(nnx.Module):
  """Pre-norm residual block; with conditioning, adaLN-zero shift/scale/gate (identity at init)."""

  def __init__(self, cfg, rngs):
    self.attn_norm = RMSNorm(cfg.width, rngs, eps=cfg.norm_eps)
    self.mlp_norm = RMSNorm(cfg.width, rngs, eps=cfg.norm_eps)
    self.attention, self.mlp = Attention(cfg, rngs), GluMlp(cfg, rngs)
    self.modulation = modulation(cfg, 6, rngs) if cfg.time_conditioning else None

  def __call__(self, x_BxLxD, cond_BxC, positions_L=None, mask: Mask | None = None, context=None):
    """Returns (x_BxLxD, the attention's (keys, values)); context: see Attention."""
    shift1 = scale1 = gate1 = shift2 = scale2 = gate2 = 0.0
    if self.modulation is not None:
      mods = self.modulation(cond_BxC)[:, None]  # [B, 1, 6, D]
      shift1, scale1, gate1, shift2, scale2, gate2 = (mods[:, :, i] for i in range(6))
    attended, kv = self.attention(self.attn_norm(x_BxLxD) * (1 + scale1) + shift1, positions_L, mask, context)
    x_BxLxD = x_BxLxD + (1 + gate1) * attended
    return x_BxLxD + (1 + gate2) * self.mlp(self.mlp_norm(x_BxLxD) * (1 + scale2) + shift2), kv
