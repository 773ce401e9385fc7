"""MD4 on text8 (characters, 27 symbols, 90M/5M/5M split): the published setting, the small transformer at length 256.

Prepare once: python launch.py --config configs/text8.py --mode prepare
(downloads text8.zip, or pass --config.data.manual_dir=DIR holding it).

88,723,264 parameters; the reference code's model for this config (configs/md4/text8.py) has 88,734,272 (-0.01%):
it embeds the 28 input ids into 64 dimensions and then projects them to 768 (51,712 parameters) where we embed
directly (21,504), and we add RMSNorm scales (19,200). Blocks as in configs/owt_small.py (width 768, 12 heads,
GLU 2048, a 64-wide time condition), with the same remaining differences; the reference's sweep also uses
dropout 0.05, which we do not have.
"""

from configs import base, owt_small


def get_config():
  config = base.get_config()
  config.data.source = "text8"
  config.data.tokenizer = "char"
  config.data.seq_len = 256
  owt_small.set_small_transformer(config.model.transformer)  # the paper's small model
  config.train.batch_size = 512
  config.train.learning_rate = 5e-4  # the reference's sweep (its launcher runs the sweep by default)
  config.train.warmup_steps = 2000
  config.train.b2 = 0.999
  config.train.grad_clip = 0.0  # the reference does not clip
  config.train.ema_decay = 0.9999
  config.train.num_steps = 1_000_000
  config.train.log_every = 100
  config.train.eval_every = 10_000
  config.train.checkpoint_every = 10_000
  config.sampler.steps = 1000
  return config
