"""MD4 "small" on OpenWebText with GPT-2 BPE: the published setting (docs/method.md, "Published numbers").

Prepare once: python launch.py --config configs/owt_small.py --mode prepare
"""

from configs import base


def get_config():
  config = base.get_config()
  config.data.source = "openwebtext"
  config.data.tokenizer = "gpt2"
  config.data.seq_len = 1024
  config.model.num_layers = 12
  config.model.scan_layers = True  # one block's program looped over 12 layers: compile time flat in depth
  config.model.width = 768
  config.model.num_heads = 12
  config.model.time_conditioning = True  # adaLN-zero
  config.diffusion.schedule = "linear"
  config.diffusion.timesteps = 0  # continuous time
  config.train.batch_size = 512
  config.train.learning_rate = 3e-4
  config.train.warmup_steps = 2000
  config.train.ema_decay = 0.9999
  config.train.num_steps = 1_000_000
  config.train.log_every = 100
  config.train.eval_every = 10_000
  config.train.checkpoint_every = 10_000
  config.eval.max_sequences = 1024  # 1M held-out tokens per periodic eval; --mode eval can raise it
  config.sampler.steps = 1000
  return config
