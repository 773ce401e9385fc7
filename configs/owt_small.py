"""MD4 "small" on OpenWebText with GPT-2 BPE: the published setting (docs/method.md, "Published numbers").

Prepare once: python launch.py --config configs/owt_small.py --mode prepare

165,876,544 parameters; the reference code's own model for this config (google-deepmind/md4,
configs/md4/openwebtext.py) has 165,857,344 (+0.01%: our RMSNorm scales, 19,200). Same shape: 12 blocks of width
768, 12 heads, a GLU of hidden size 2048, adaLN-zero modulations read from a 64-wide time condition
(64 -> 256 -> 64), untied 50,258 x 768 input and 768 x 50,257 output embeddings. Remaining differences from the
reference (its sweep's "small" run) and the paper:
- the GLU gates with SiLU (SwiGLU); the reference's "glu" gates with a sigmoid, and passes the condition through
  a sigmoid before each modulation;
- pre-norms are RMSNorm with a learned scale; the reference's conditioned blocks use a LayerNorm without one;
- a block adds (1 + gate) x attention (identity-plus at init); the reference adds gate x attention (zero at init);
- no dropout (the reference's sweep uses 0.02); weight decay 0.03 on matrices only (the reference decays every
  parameter); the learning rate decays by cosine to 10% (the reference: to 0);
- held-out data: a document-hash 0.5% split (docs/design.md); MD4's paper holds out 2% of OpenWebText.
"""

from configs import base


def set_small_transformer(transformer) -> None:
  """The published small model (MD4's text8 and OpenWebText runs) in a config's model.transformer group."""
  transformer.num_layers = 12
  transformer.scan_layers = True  # one block's program looped over 12 layers: compile time flat in depth
  # On a GPU, --config.model.transformer.scan_unroll=0 runs the same stacked layers as straight-line code
  # (docs/scaling.md).
  transformer.width = 768
  transformer.num_heads = 12
  transformer.mlp_hidden = 2048  # the reference's rule: 2/3 x 4 x width, rounded up to a multiple of 32
  transformer.cond_dim = 64  # the reference's feature_dim


def get_config():
  config = base.get_config()
  config.data.source = "openwebtext"
  config.data.tokenizer = "gpt2"
  config.data.seq_len = 1024
  set_small_transformer(config.model.transformer)
  config.model.time_conditioning = True  # adaLN-zero
  config.diffusion.schedule = "linear"
  config.diffusion.timesteps = 0  # continuous time
  config.train.batch_size = 512
  config.train.learning_rate = 3e-4
  config.train.warmup_steps = 2000
  config.train.b2 = 0.999
  config.train.grad_clip = 0.0  # the reference does not clip
  config.train.ema_decay = 0.9999
  config.train.num_steps = 1_000_000
  config.train.log_every = 100
  config.train.eval_every = 10_000
  config.train.checkpoint_every = 10_000
  config.eval.max_sequences = 1024  # 1M held-out tokens per periodic eval; --mode eval can raise it
  config.sampler.steps = 1000
  return config
