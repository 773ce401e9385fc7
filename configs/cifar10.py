"""MD4 on CIFAR-10 pixels: the published setting (Shi et al. 2024: 2.75 bits/dim, 28M parameters).

Prepare once: python launch.py --config configs/cifar10.py --mode prepare
(downloads cifar-10-python.tar.gz, 163 MiB, or --config.data.manual_dir=DIR holding it).

Settings, from the reference code's configs/md4/cifar10.py and networks/unet.py (the paper's appendix
could not be read offline; arXiv v1 reported 2.78 bits/dim, the later version 2.75):
- U-Net without down-sampling: 32 residual blocks down, 33 up, 128 channels, single-head attention in
  the middle, dropout 0.1; 256 levels per sub-pixel, 3,072 dimensions.
- AdamW, learning rate 2e-4, 100 warm-up steps, weight decay 0.01, b2 0.99; EMA 0.9999; batch 256;
  linear schedule, continuous time; samples with 256 steps on the cosine grid.
- Differences from the reference code: it does not clip gradients (here train.grad_clip = 0 too) and
  decays the learning rate to 0 with a cosine (here to 10% of the peak); its weight decay covers every
  parameter (here matrices only). Its 2M steps are kept.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.data.source = "cifar10"
  config.model.backbone = "unet"
  config.model.unet.channels = 128
  config.model.unet.num_res_blocks = 32
  config.model.unet.dropout = 0.1
  config.diffusion.schedule = "linear"
  config.diffusion.timesteps = 0
  config.train.batch_size = 256
  config.train.learning_rate = 2e-4
  config.train.warmup_steps = 100
  config.train.weight_decay = 0.01
  config.train.b2 = 0.99
  config.train.grad_clip = 0.0
  config.train.ema_decay = 0.9999
  config.train.num_steps = 2_000_000
  config.train.log_every = 500
  config.train.eval_every = 10_000
  config.train.checkpoint_every = 5_000
  config.eval.batch_size = 256
  config.sampler.steps = 256
  config.sampler.grid = "cosine"
  config.sampler.num_samples = 64
  return config
