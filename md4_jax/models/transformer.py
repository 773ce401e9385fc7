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
setting is part of a run's config. `scan_unroll` = 0 runs the same stacked
parameters as straight-line code instead (the GPU's choice: a rolled loop
stores each layer's saved activations in stacks and copies them back out in
the backward pass); it changes cost only, so a resumed run may change it.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from md4_jax.core import fused_head
from md4_jax.models.attention import Mask, check_attention
from md4_jax.models.backbone import Backbone, classes, shared_keys
from md4_jax.models.layers import LAYER_AXIS, Dense, RMSNorm, normal, param, timestep_embedding
from md4_jax.models.transformer_block import Block, modulation


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """The transformer's settings; their defaults and meanings: config_group below (model.transformer.*) and
  configs/base.py (model.*, every backbone's)."""
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
  scan_unroll: int  # with scan_layers: layers per loop iteration; 0 = all (straight-line code, stacked params)
  attention: str  # "auto" | "xla" | "cudnn": the attention kernel (attention.attention_kernel)
  # The Llama / Qwen families' variants (interop/hf_config.py sets them from a checkpoint); defaults: this
  # project's own layout, so older workdirs restore unchanged.
  num_kv_heads: int = 0  # key / value heads (grouped-query attention); 0 = num_heads
  head_dim: int = 0  # per-head size; 0 = width / num_heads
  qkv_bias: bool = False  # biases on the query / key / value projections (Qwen2)
  qk_norm: bool = False  # RMSNorm over each head's queries and keys (Qwen3)
  rope_theta: float = 10_000.0  # the rotary positions' base
  norm_eps: float = 1e-6  # every RMSNorm's epsilon
  tie_embeddings: bool = False  # the output layer is the input embedding's real-token rows, transposed

  def __post_init__(self):
    for name in ("num_layers", "width", "num_heads"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.transformer.{name}={getattr(self, name)} must be positive")
    if not self.head_dim and (self.width % self.num_heads or (self.width // self.num_heads) % 2):
      raise ValueError(f"model.transformer.width={self.width} must split into model.transformer.num_heads="
                       f"{self.num_heads} heads of even size (or set model.transformer.head_dim)")
    if self.head_dim < 0 or self.head_dim % 2:
      raise ValueError(f"model.transformer.head_dim={self.head_dim} must be even and >= 0 (0 = width / num_heads)")
    if self.num_kv_heads < 0 or self.num_heads % self.kv_heads:
      raise ValueError(f"model.transformer.num_kv_heads={self.num_kv_heads} must divide model.transformer.num_heads="
                       f"{self.num_heads} (0 = num_heads)")
    if self.rope_theta <= 0 or self.norm_eps <= 0:
      raise ValueError(f"model.transformer.rope_theta={self.rope_theta} and model.transformer.norm_eps="
                       f"{self.norm_eps} must be positive")
    if self.positions not in ("rope", "learned"):
      raise ValueError(f"model.transformer.positions={self.positions!r}: choose 'rope' or 'learned'")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"model.dtype={self.dtype!r}: choose 'float32' or 'bfloat16'")
    if self.remat not in ("none", "block"):
      raise ValueError(f"model.remat={self.remat!r}: choose 'none' or 'block'")
    if self.scan_unroll < 0:
      raise ValueError(f"model.transformer.scan_unroll={self.scan_unroll} must be >= 0 (1 = a rolled loop, 0 = every "
                       "layer)")
    if self.mlp_hidden < 0 or self.cond_dim < 0:
      raise ValueError(f"model.transformer.mlp_hidden={self.mlp_hidden} and model.transformer.cond_dim="
                       f"{self.cond_dim} must be >= 0 (0 = the width-derived size)")
    check_attention(self.attention, self.dtype)

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def head_size(self) -> int:
    return self.head_dim or self.width // self.num_heads

  @property
  def hidden(self) -> int:
    """The GLU's hidden size."""
    return self.mlp_hidden or int(self.width * self.mlp_ratio)

  @property
  def num_classes(self) -> int:
    return 0  # no class input

  def summary(self) -> str:
    condition = f", condition {self.cond_dim}" if self.cond_dim and self.time_conditioning else ""
    heads = f"{self.num_heads} heads" + (f" ({self.kv_heads} key/value)" if self.kv_heads != self.num_heads else "")
    return (f"{self.num_layers} layers, width {self.width}, {heads}, GLU {self.hidden}{condition}, "
            f"vocab {self.vocab_size}, sequence {self.seq_len}")


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
    self.final_norm = RMSNorm(cfg.width, rngs, eps=cfg.norm_eps)
    # Zero init: the untrained model predicts uniformly, so its loss starts at D log V. Tied: the embedding's
    # real-token rows are the output layer too (the mask row, id V, is never predicted).
    self.head = None if cfg.tie_embeddings else Dense((cfg.width,), (cfg.vocab_size,), ("embed", "vocab"), rngs,
                                                      zero_init=True)

  def __call__(self, z_BxL, t_B, label_B=None, *, dropout_key=None, positions_L=None, mask: Mask | None = None):
    return self.head_logits(self.features(z_BxL, t_B, label_B, dropout_key=dropout_key, positions_L=positions_L,
                                          mask=mask))

  def features(self, z_BxL, t_B, label_B=None, *, dropout_key=None, positions_L=None, mask: Mask | None = None):
    """The final normalised hidden states h_BxLxD, in the compute dtype. The transformer has no class
    input and no dropout (label_B and dropout_key are accepted for the common backbone protocol).

    positions_L: each input position's index (default 0..L-1; block diffusion repeats them for its two
    halves); mask: an attention mask for this call (default: causal if configured, else none)."""
    del label_B, dropout_key
    return self._layers(self._input_embeddings(z_BxL, positions_L), self._condition(t_B), positions_L, mask)[0]

  def _condition(self, t_B):
    """The time condition [B, cond_dim or D] the adaLN modulations read; None without time conditioning."""
    if not self.cfg.time_conditioning:
      return None
    cond_BxC = jax.nn.silu(self.time_mlp(timestep_embedding(t_B, self.cfg.cond_dim or self.cfg.width).astype(
        jnp.dtype(self.cfg.dtype))))
    return cond_BxC if self.time_mlp_out is None else jax.nn.silu(self.time_mlp_out(cond_BxC))

  def _layers(self, x_BxLxD, cond_BxC, positions_L, mask, cache=None, visible_S=None, keep_kv: bool = False):
    """Every block, then the final norm (and modulation): (h_BxLxD, each layer's keys and values [layers, B, L,
    H, K] when keep_kv, else None). cache: ([layers, B, S, H, K] keys, values) the positions also see where
    visible_S (the sampling caches' pass)."""
    context = lambda layer_cache: None if cache is None else (*layer_cache, visible_S)  # noqa: E731
    if self.cfg.scan_layers:
      # jax.lax.scan over the stacked state, not nnx.scan: the samplers call the network inside their own
      # loops, and nnx's transforms refuse a module created outside the trace they run in.
      block_def, stacked = nnx.split(self.blocks)

      def apply_layer(x_BxLxD, layer_and_cache):
        layer, layer_cache = layer_and_cache
        x_BxLxD, kv = nnx.merge(block_def, layer)(x_BxLxD, cond_BxC, positions_L, mask, context(layer_cache))
        return x_BxLxD, kv if keep_kv else None

      if self.cfg.remat == "block" and not keep_kv:  # keep only each block's input; recompute its insides
        apply_layer = jax.checkpoint(apply_layer)
      x_BxLxD, kv = jax.lax.scan(apply_layer, x_BxLxD, (stacked, cache), unroll=self.cfg.scan_unroll or True)
    else:
      apply_block = lambda block, x, cond, positions, layer_cache: block(x, cond, positions, mask,  # noqa: E731
                                                                          context(layer_cache))
      if self.cfg.remat == "block" and not keep_kv:
        apply_block = nnx.remat(apply_block)
      layer_kvs = []
      for index, block in enumerate(self.blocks):
        layer_cache = None if cache is None else (cache[0][index], cache[1][index])
        x_BxLxD, layer_kv = apply_block(block, x_BxLxD, cond_BxC, positions_L, layer_cache)
        layer_kvs.append(layer_kv)
      kv = tuple(jnp.stack(parts) for parts in zip(*layer_kvs)) if keep_kv else None
    x_BxLxD = self.final_norm(x_BxLxD)
    if cond_BxC is not None:
      shift, scale = jnp.moveaxis(self.final_modulation(cond_BxC), 1, 0)[:, :, None]  # [B, 1, D] each
      x_BxLxD = x_BxLxD * (1 + scale) + shift
    return x_BxLxD, kv

  def _input_embeddings(self, z_BxL, positions_L=None):
    """Token (+ learned position) embeddings in the compute dtype; positions_L default 0..L-1."""
    x_BxLxD = self.embed[...][z_BxL]
    if self.pos_embed is not None:
      table = self.pos_embed[...]
      x_BxLxD = x_BxLxD + (table[: z_BxL.shape[1]] if positions_L is None else table[positions_L])  # [(B,) L, D]
    return x_BxLxD.astype(jnp.dtype(self.cfg.dtype))

  def empty_cache(self, batch_size: int, length: int | None = None):
    """(keys, values), each [layers, B, length (default seq_len), H, K] in the compute dtype, all zero."""
    cfg = self.cfg
    shape = (cfg.num_layers, batch_size, length or cfg.seq_len, cfg.kv_heads, cfg.head_size)
    return jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype)

  def extend(self, chunk_BxC, positions_C, cache=None, visible_S=None, t_B=None):
    """The sampling caches' pass: hidden states h_BxCxD of C tokens at positions_C ([C], or [B, C]: each row's
    own), which see each other and the cached positions where visible_S ([S] bool; or [S + C]: which cached, then
    which chunk keys they see; or per row and query, [B, C, S + C]: cached_attention);
    cache None: only each other (a whole sequence's pass that fills a cache). Returns (h, the chunk's (keys, values) [layers, B, C, H, K]; `write_cache` stores them).
    t_B: the time, for a time-conditioned network."""
    if self.cfg.time_conditioning and t_B is None:
      raise ValueError("a time-conditioned network's cached pass needs t_B")
    return self._layers(self._input_embeddings(chunk_BxC, positions_C), self._condition(t_B), positions_C, None,
                        cache, visible_S, keep_kv=True)

  def head_kernel(self):
    """The output layer's kernel [D, V] (float32): its own, or the embedding's real-token rows transposed."""
    return self.embed[...][: self.cfg.vocab_size].T if self.head is None else self.head.kernel[...]

  def head_logits(self, h_xD):
    """Hidden states [..., D] -> float32 logits [..., V] over the real tokens."""
    if self.head is not None:
      return self.head(h_xD, out_dtype=jnp.float32)
    return jnp.matmul(h_xD, self.head_kernel().astype(h_xD.dtype), preferred_element_type=jnp.float32)

  def head_loss(self, h_NxD, x0_N, **loss):
    """`token_loss(head_logits(h), x0, ...)` per position [N], fused and chunked (fused_head.head_loss): the
    loss in training and evaluation, with no [N, V] array kept."""
    return fused_head.head_loss(h_NxD, self.head_kernel(), x0_N, **loss)

  def weighted_nll(self, h_NxD, x0_N, weight_N):
    """(sum of weight_N x -log p(x0), the per-position values [N] without gradient): the output layer and
    cross-entropy with the gradient made in the forward pass (fused_head.weighted_nll)."""
    return fused_head.weighted_nll(h_NxD, self.head_kernel(), x0_N, weight_N)


def config_group() -> ml_collections.ConfigDict:
  """model.transformer.*: gathered by configs/base.py."""
  group = ml_collections.ConfigDict()
  group.num_layers = 4  # transformer blocks
  group.width = 128  # model dimension
  group.num_heads = 4  # attention heads (width / num_heads must be even)
  group.mlp_ratio = 4.0  # GLU hidden size = mlp_ratio * width (unless mlp_hidden is set)
  group.mlp_hidden = 0  # GLU hidden size; 0 = mlp_ratio * width (the published text models: 2048 at width 768)
  group.cond_dim = 0  # width of the time condition the adaLN modulations read; 0 = width (published: 64)
  group.positions = "rope"  # "rope" | "learned"
  group.num_kv_heads = 0  # key / value heads (grouped-query attention; must divide num_heads); 0 = num_heads
  group.head_dim = 0  # size of each attention head; 0 = width / num_heads
  group.qkv_bias = False  # biases on the query / key / value projections (Qwen2)
  group.qk_norm = False  # RMSNorm over each head's queries and keys before the rotation (Qwen3)
  group.rope_theta = 10000.0  # base of the rotary positions' frequencies
  group.norm_eps = 1e-6  # epsilon of every RMSNorm
  group.tie_embeddings = False  # output layer = the input embedding's token rows, transposed (no head of its own)
  group.scan_layers = False  # loop one block over stacked parameters (compile time flat in depth)
  # Same function and checkpoint layout either way, so a resumed run may change it; 0 leaves no per-layer
  # activation stacks to fill and copy back out (the GPU's choice), but compile time grows with depth.
  group.scan_unroll = 1  # with scan_layers: layers per loop iteration; 1 = a rolled loop, 0 = all of them
  return group


def build(config, modality, requirements: dict) -> Backbone:
  """model.backbone = "transformer": text, or any token sequence."""
  if classes(config, modality):
    raise ValueError("model.class_conditional=True needs an image backbone (model.backbone='unet' or 'uvit')")
  cfg = TransformerConfig(vocab_size=modality.vocab_size, seq_len=modality.length,
                          causal=requirements.get("causal", False), **dict(config.model.transformer),
                          **shared_keys(config, requirements))
  return Backbone(cfg, functools.partial(Transformer, cfg))


def write_cache(cache, chunk_kv, start):
  """The cache ([layers, B, S, H, K] keys, values) with a chunk's keys and values written at slots start..."""
  return tuple(jax.lax.dynamic_update_slice_in_dim(cached, chunk.astype(cached.dtype), start, axis=2)
               for cached, chunk in zip(cache, chunk_kv))
