"""MD4 on text8 (characters, 27 symbols, 90M/5M/5M split): the small transformer at length 256.

Prepare once: python launch.py --config configs/text8.py --mode prepare
(downloads text8.zip, or pass --config.data.manual_dir=DIR holding it).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.data.source = "text8"
  config.data.tokenizer = "char"
  config.data.seq_len = 256
  config.model.num_layers = 12
  config.model.scan_layers = True  # one block's program looped over 12 layers: compile time flat in depth
  config.model.width = 768
  config.model.num_heads = 12
  config.train.batch_size = 512
  config.train.learning_rate = 3e-4
  config.train.warmup_steps = 2000
  config.train.ema_decay = 0.9999
  config.train.num_steps = 1_000_000
  config.train.log_every = 100
  config.train.eval_every = 10_000
  config.train.checkpoint_every = 10_000
  config.sampler.steps = 1000
  return config
