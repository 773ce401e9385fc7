"""The image quick start: MD4 on the shipped 8x8 handwritten digits (no download), ~10 min on 2 CPU cores.

1,797 images of 64 pixels with 17 grey levels (0-16); every tenth image (index 0, 10, ...) is held out
(180 images), the other 1,617 train. A small U-Net (1 + 2 + 2 residual blocks of 128 channels, attention
in the middle) on the pixels as 64 tokens. For scale, on a random 10% split: log2(17) = 4.09 bits/dim,
every pixel independent 2.43, a 10-component mixture of per-pixel categoricals 2.20.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.data.source = "digits"
  config.model.backbone = "unet"
  config.model.unet.channels = 128
  config.model.unet.num_res_blocks = 1
  config.model.unet.dropout = 0.1
  config.train.batch_size = 32  # per example, batch 32 runs faster here than 64 and learns more per example
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 100
  config.train.weight_decay = 0.01
  config.train.num_steps = 2400
  config.train.ema_decay = 0.99  # a short run: a ~100-step average (0.999 lagged the improving raw params by 0.01)
  config.train.eval_every = 600
  config.train.checkpoint_every = 600
  config.eval.batch_size = 180  # the whole held-out split in one batch
  config.eval.time_samples = 32  # stratified draws of t per image: little time-sampling noise in the reported bound
  config.sampler.steps = 64
  config.sampler.num_samples = 64
  return config
