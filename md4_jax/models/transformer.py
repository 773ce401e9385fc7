"""Bidirectional transformer denoiser for token sequences (Flax NNX).

Input: z_BxL in [0, V] where V is the mask id; output: logits_BxLxV over the V
real tokens (never the mask). Pre-norm blocks, RoPE or learned positions,
GLU MLP, optional adaLN-zero conditioning on t. Every parameter carries
logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`) that sharding.py
maps onto the mesh.

With `scan_layers` the blocks are one Block whose parameters are stacked along
a leading `layers` axis, run by `jax.lax.scan`: the program holds one block, so
compile time does not grow with depth (benchmarks/compile_time.py). The two
layouts compute the same function but their checkpoints differ, so the
setting is part of a run's config.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from md4_jax.core import fused_head
from md4_jax.models.attention import CAUSAL, Mask, attention, attention_kernel, check_attention
from md4_jax.models.backbone import Backbone, classes, shared_keys
from md4_jax.models.layers import LAYER_AXIS, Dense, RMSNorm, normal, param, rope, silu_glu, timestep_embedding


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """The transformer's settings; their defaults and meanings live in configs/base.py (model.*)."""
  vocab_size: int  # V real tokens; the input vocabulary is V + 1 (mask id V)
  seq_len: int
  num_layers: int
  width: int
  num_heads: int
  mlp_ratio: float
  mlp_hidden: int  # the GLU's hidden size; 0 = mlp_ratio * width
  cond_dim: int  # width of the time condition the adaLN modulations read; 0 = width
  positions: str  # "rope" | "learned"
  time_conditioning: bool  # adaLN-zero on t; without it the network is time-independent (RADD)
  dtype: str  # compute dtype of activations and matmuls; params stay float32
  remat: str  # "block": recompute each block's activations in the backward pass
  causal: bool  # attention to earlier positions only (the autoregressive baseline)
  scan_layers: bool  # one Block program looped over stacked parameters (compile time flat in depth)
  attention: str  # "auto" | "xla" | "cudnn": the attention kernel (attention.attention_kernel)

  def __post_init__(self):
    if self.width % self.num_heads or (self.width // self.num_heads) % 2:
      raise ValueError(f"model.width={self.width} must split into model.num_heads={self.num_heads} "
                       "heads of even size")
    if self.positions not in ("rope", "learned"):
      raise ValueError(f"model.positions={self.positions!r}: choose 'rope' or 'learned'")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"model.dtype={self.dtype!r}: choose 'float32' or 'bfloat16'")
    if self.remat not in ("none", "block"):
      raise ValueError(f"model.remat={self.remat!r}: choose 'none' or 'block'")
    if self.mlp_hidden < 0 or self.cond_dim < 0:
      raise ValueError(f"model.mlp_hidden={self.mlp_hidden} and model.cond_dim={self.cond_dim} must be >= 0 "
                       "(0 = the width-derived size)")
    check_attention(self.attention, self.dtype)

  @property
  def hidden(self) -> int:
    """The GLU's hidden size."""
    return self.mlp_hidden or int(self.width * self.mlp_ratio)

  @property
  def num_classes(self) -> int:
    return 0  # no class input

  def summary(self) -> str:
    condition = f", condition {self.cond_dim}" if self.cond_dim and self.time_conditioning else ""
    return (f"{self.num_layers} layers, width {self.width}, {self.num_heads} heads, GLU {self.hidden}{condition}, "
            f"vocab {self.vocab_size}, sequence {self.seq_len}")


class Attention(nnx.Module):

  def __init__(self, cfg: TransformerConfig, rngs):
    head_dim = cfg.width // cfg.num_heads
    qkv_shape = (cfg.num_heads, head_dim)
    self.query = Dense((cfg.width,), qkv_shape, ("embed", "heads", "kv"), rngs)
    self.key = Dense((cfg.width,), qkv_shape, ("embed", "heads", "kv"), rngs)
    self.value = Dense((cfg.width,), qkv_shape, ("embed", "heads", "kv"), rngs)
    self.out = Dense(qkv_shape, (cfg.width,), ("heads", "kv", "embed"), rngs)
    self.use_rope, self.mask = cfg.positions == "rope", CAUSAL if cfg.causal else None
    self.kernel = attention_kernel(cfg.attention, cfg.dtype, head_dim)

  def __call__(self, x_BxLxD, positions_L=None, mask: Mask | None = None):
    """mask: this call's (block diffusion's layouts), else the configured one (causal or none)."""
    q, k, v = self.query(x_BxLxD), self.key(x_BxLxD), self.value(x_BxLxD)  # [B, L, H, K]
    if self.use_rope:
      q, k = rope(q, positions_L), rope(k, positions_L)
    return self.out(attention(q, k, v, mask=mask or self.mask, kernel=self.kernel))


  def extend(self, x_BxCxD, positions_C, keys_BxLxHxK, values_BxLxHxK, start):
    """A chunk of C positions (start..start+C-1) attending to the cached keys and values of positions < start
    and to itself (bidirectionally): block diffusion's sampler with an exact cache. Returns (out_BxCxD, the
    chunk's (keys, values) [B, C, H, K] for the cache)."""
    q, k, v = self.query(x_BxCxD), self.key(x_BxCxD), self.value(x_BxCxD)
    if self.use_rope:
      q, k = rope(q, positions_C), rope(k, positions_C)
    all_k, all_v = jnp.concatenate([keys_BxLxHxK, k], axis=1), jnp.concatenate([values_BxLxHxK, v], axis=1)
    cached_L = keys_BxLxHxK.shape[1]
    visible_LplusC = jnp.concatenate([jnp.arange(cached_L) < start, jnp.ones(x_BxCxD.shape[1], bool)])
    scores_BxHxCxS = jnp.einsum("bqhk,bshk->bhqs", q, all_k, preferred_element_type=jnp.float32)
    scores_BxHxCxS = jnp.where(visible_LplusC, scores_BxHxCxS / jnp.sqrt(q.shape[-1]).astype(jnp.float32), -jnp.inf)
    probs_BxHxCxS = jax.nn.softmax(scores_BxHxCxS, axis=-1).astype(all_v.dtype)
    return self.out(jnp.einsum("bhqs,bshk->bqhk", probs_BxHxCxS, all_v)), (k, v)


class GluMlp(nnx.Module):

  def __init__(self, cfg: TransformerConfig, rngs):
    hidden = cfg.hidden
    self.gate = Dense((cfg.width,), (hidden,), ("embed", "mlp"), rngs)
    self.up = Dense((cfg.width,), (hidden,), ("embed", "mlp"), rngs)
    self.down = Dense((hidden,), (cfg.width,), ("mlp", "embed"), rngs)

  def __call__(self, x):
    return self.down(silu_glu(self.gate(x), self.up(x)))


def modulation(cfg: TransformerConfig, count: int, rngs) -> Dense:
  """adaLN-zero: `count` shift / scale / gate vectors [count, D] from the condition, zero at init. From a
  narrow condition (cond_dim) it has a bias, as in the reference code and DiT; the full-width layout has none."""
  if cfg.cond_dim:
    return Dense((cfg.cond_dim,), (count, cfg.width), (None, None, "embed_out"), rngs, zero_init=True, bias=True)
  return Dense((cfg.width,), (count, cfg.width), ("embed", None, "embed_out"), rngs, zero_init=True)


class Block(nnx.Module):
  """Pre-norm residual block; with conditioning, adaLN-zero shift/scale/gate (identity at init)."""

  def __init__(self, cfg: TransformerConfig, rngs):
    self.attn_norm, self.mlp_norm = RMSNorm(cfg.width, rngs), RMSNorm(cfg.width, rngs)
    self.attention, self.mlp = Attention(cfg, rngs), GluMlp(cfg, rngs)
    self.modulation = modulation(cfg, 6, rngs) if cfg.time_conditioning else None

  def __call__(self, x_BxLxD, cond_BxC, positions_L=None, mask: Mask | None = None):
    if self.modulation is None:
      x_BxLxD = x_BxLxD + self.attention(self.attn_norm(x_BxLxD), positions_L, mask)
      return x_BxLxD + self.mlp(self.mlp_norm(x_BxLxD))
    mods = self.modulation(cond_BxC)[:, None]  # [B, 1, 6, D]
    shift1, scale1, gate1, shift2, scale2, gate2 = (mods[:, :, i] for i in range(6))
    h = self.attn_norm(x_BxLxD) * (1 + scale1) + shift1
    x_BxLxD = x_BxLxD + (1 + gate1) * self.attention(h, positions_L, mask)
    h = self.mlp_norm(x_BxLxD) * (1 + scale2) + shift2
    return x_BxLxD + (1 + gate2) * self.mlp(h)


  def extend(self, x_BxCxD, positions_C, keys_BxLxHxK, values_BxLxHxK, start):
    """Block.__call__ for a chunk over cached keys and values (Attention.extend); no time conditioning."""
    out_BxCxD, chunk_kv = self.attention.extend(self.attn_norm(x_BxCxD), positions_C, keys_BxLxHxK,
                                                values_BxLxHxK, start)
    x_BxCxD = x_BxCxD + out_BxCxD
    return x_BxCxD + self.mlp(self.mlp_norm(x_BxCxD)), chunk_kv


class Transformer(nnx.Module):
  """`model(z_BxL, t_B) -> logits_BxLxV` (float32) = `model.head_logits(model.features(z_BxL, t_B))`.

  The two halves are separate so the loss can fuse the output layer with itself (`head_loss`) and apply it
  only at masked positions.
  """

  splits_head = True  # features / head_logits / head_loss (models/__init__.py)

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = param(rngs, normal(1.0), (cfg.vocab_size + 1, cfg.width), ("vocab", "embed"))
    self.pos_embed = (param(rngs, normal(0.02), (cfg.seq_len, cfg.width), (None, "embed"))
                      if cfg.positions == "learned" else None)
    # The time condition. cond_dim = 0 (the layout before 2026-12-04, kept so old workdirs restore): sinusoidal
    # features of width D, one D x D layer, SiLU. cond_dim = C: features of width C, C -> 4C -> C with SiLU after
    # each (the reference code's, C = 64 for its text models), so the modulations cost C x 6D per block, not D x 6D.
    if cfg.time_conditioning and cfg.cond_dim:
      self.time_mlp = Dense((cfg.cond_dim,), (4 * cfg.cond_dim,), (None, None), rngs, bias=True)
      self.time_mlp_out = Dense((4 * cfg.cond_dim,), (cfg.cond_dim,), (None, None), rngs, bias=True)
    elif cfg.time_conditioning:
      self.time_mlp, self.time_mlp_out = Dense((cfg.width,), (cfg.width,), ("embed", "embed_out"), rngs), None
    if cfg.time_conditioning:
      self.final_modulation = modulation(cfg, 2, rngs)
    if cfg.scan_layers:  # one Block whose parameters carry a leading "layers" axis of num_layers
      make_blocks = nnx.vmap(lambda rngs: Block(cfg, rngs), in_axes=0, out_axes=0,
                             transform_metadata={nnx.PARTITION_NAME: LAYER_AXIS})
      self.blocks = nnx.split_rngs(splits=cfg.num_layers)(make_blocks)(rngs)
    else:
      self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.width, rngs)
    # Zero init: the untrained model predicts uniformly, so its loss starts at D log V.
    self.head = Dense((cfg.width,), (cfg.vocab_size,), ("embed", "vocab"), rngs, zero_init=True)

  def __call__(self, z_BxL, t_B, label_B=None, *, dropout_key=None, positions_L=None, mask: Mask | None = None):
    return self.head_logits(self.features(z_BxL, t_B, label_B, dropout_key=dropout_key, positions_L=positions_L,
                                          mask=mask))

  def features(self, z_BxL, t_B, label_B=None, *, dropout_key=None, positions_L=None, mask: Mask | None = None):
    """The final normalised hidden states h_BxLxD, in the compute dtype. The transformer has no class
    input and no dropout (label_B and dropout_key are accepted for the common backbone protocol).

    positions_L: each input position's index (default 0..L-1; block diffusion repeats them for its two
    halves); mask: an attention mask for this call (default: causal if configured, else none)."""
    del label_B, dropout_key
    dtype = jnp.dtype(self.cfg.dtype)
    x_BxLxD = self._input_embeddings(z_BxL, positions_L)
    cond_BxC = None  # [B, cond_dim or D]
    if self.cfg.time_conditioning:
      cond_BxC = jax.nn.silu(self.time_mlp(timestep_embedding(t_B, self.cfg.cond_dim or self.cfg.width).astype(dtype)))
      if self.time_mlp_out is not None:
        cond_BxC = jax.nn.silu(self.time_mlp_out(cond_BxC))
    if self.cfg.scan_layers:
      # jax.lax.scan over the stacked state, not nnx.scan: the samplers call the network inside their own
      # loops, and nnx's transforms refuse a module created outside the trace they run in.
      block_def, stacked = nnx.split(self.blocks)

      def apply_layer(x_BxLxD, layer):
        return nnx.merge(block_def, layer)(x_BxLxD, cond_BxC, positions_L, mask), None

      if self.cfg.remat == "block":  # keep only each block's input; recompute its insides for the gradient
        apply_layer = jax.checkpoint(apply_layer)
      x_BxLxD, _ = jax.lax.scan(apply_layer, x_BxLxD, stacked)
    else:
      apply_block = lambda block, x, cond, positions: block(x, cond, positions, mask)  # noqa: E731
      if self.cfg.remat == "block":
        apply_block = nnx.remat(apply_block)
      for block in self.blocks:
        x_BxLxD = apply_block(block, x_BxLxD, cond_BxC, positions_L)
    x_BxLxD = self.final_norm(x_BxLxD)
    if cond_BxC is not None:
      shift, scale = jnp.moveaxis(self.final_modulation(cond_BxC), 1, 0)[:, :, None]  # [B, 1, D] each
      x_BxLxD = x_BxLxD * (1 + scale) + shift
    return x_BxLxD

  def _input_embeddings(self, z_BxL, positions_L=None):
    """Token (+ learned position) embeddings in the compute dtype; positions_L default 0..L-1."""
    x_BxLxD = self.embed[...][z_BxL]
    if self.pos_embed is not None:
      table = self.pos_embed[...]
      x_BxLxD = x_BxLxD + (table[None, : z_BxL.shape[1]] if positions_L is None else table[positions_L][None])
    return x_BxLxD.astype(jnp.dtype(self.cfg.dtype))

  def empty_cache(self, batch_size: int):
    """(keys, values), each [layers, B, L, H, K] in the compute dtype: nothing cached yet."""
    cfg = self.cfg
    shape = (cfg.num_layers, batch_size, cfg.seq_len, cfg.num_heads, cfg.width // cfg.num_heads)
    return jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype)

  def extend(self, chunk_BxC, start, cache):
    """Hidden states h_BxCxD of the C tokens at positions start..start+C-1, each seeing the cached positions
    < start and the whole chunk (block diffusion's block-causal pass, one block at a time); returns (h, the
    cache with the chunk's keys and values written at start). Time-independent networks only."""
    if self.cfg.time_conditioning:
      raise ValueError("a cached pass needs a time-independent network (model.time_conditioning=False)")
    keys_NxBxLxHxK, values_NxBxLxHxK = cache
    positions_C = start + jnp.arange(chunk_BxC.shape[1])
    x_BxCxD = self._input_embeddings(chunk_BxC, positions_C)
    if self.cfg.scan_layers:
      block_def, stacked = nnx.split(self.blocks)

      def apply_layer(x, layer_and_cache):
        layer, keys, values = layer_and_cache
        return nnx.merge(block_def, layer).extend(x, positions_C, keys, values, start)

      x_BxCxD, (chunk_k, chunk_v) = jax.lax.scan(apply_layer, x_BxCxD, (stacked, keys_NxBxLxHxK, values_NxBxLxHxK))
    else:
      chunks = []
      for index, block in enumerate(self.blocks):
        x_BxCxD, kv = block.extend(x_BxCxD, positions_C, keys_NxBxLxHxK[index], values_NxBxLxHxK[index], start)
        chunks.append(kv)
      chunk_k, chunk_v = (jnp.stack(parts) for parts in zip(*chunks))
    write = lambda cached, chunk: jax.lax.dynamic_update_slice_in_dim(cached, chunk.astype(cached.dtype), start,  # noqa: E731
                                                                      axis=2)
    return self.final_norm(x_BxCxD), (write(keys_NxBxLxHxK, chunk_k), write(values_NxBxLxHxK, chunk_v))

  def head_logits(self, h_xD):
    """Hidden states [..., D] -> float32 logits [..., V] over the real tokens."""
    return self.head(h_xD, out_dtype=jnp.float32)

  def head_loss(self, h_NxD, x0_N, **loss):
    """`token_loss(head_logits(h), x0, ...)` per position [N], fused and chunked (fused_head.head_loss): the
    loss in training and evaluation, with no [N, V] array kept."""
    return fused_head.head_loss(h_NxD, self.head.kernel[...], x0_N, **loss)


def build(config, modality, requirements: dict) -> Backbone:
  """model.backbone = "transformer": text, or any token sequence."""
  if classes(config, modality):
    raise ValueError("model.class_conditional=True needs an image backbone (model.backbone='unet' or 'uvit')")
  model = config.model
  cfg = TransformerConfig(vocab_size=modality.vocab_size, seq_len=modality.length, num_layers=model.num_layers,
                          width=model.width, num_heads=model.num_heads, mlp_ratio=model.mlp_ratio,
                          mlp_hidden=model.mlp_hidden, cond_dim=model.cond_dim, positions=model.positions,
                          causal=requirements.get("causal", False), scan_layers=model.scan_layers,
                          **shared_keys(config, requirements))
  return Backbone(cfg, functools.partial(Transformer, cfg))
