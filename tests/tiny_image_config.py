"""A tiny image model on the embedded digits for tests: trains in seconds on a CPU."""

from configs import base


def get_config(backbone: str = "unet"):
  """backbone: "unet" or "uvit" (`--config tests/tiny_image_config.py:uvit`); only its group is made tiny, since
  a key set on a backbone the run does not use is refused."""
  config = base.get_config()
  config.data.source = "digits"
  config.model.backbone = backbone
  if backbone == "unet":
    config.model.unet.channels = 32
    config.model.unet.num_res_blocks = 1
  else:  # 1 + 2 residual blocks around a 1-layer DiT of width 32
    config.model.uvit.channels = 32
    config.model.uvit.num_res_blocks = 1
    config.model.uvit.width = 32
    config.model.uvit.num_layers = 1
    config.model.uvit.num_heads = 2
  config.train.num_steps = 12
  config.train.batch_size = 8
  config.train.learning_rate = 3e-3
  config.train.warmup_steps = 2
  config.train.log_every = 2
  config.train.eval_every = 6
  config.train.checkpoint_every = 4
  config.eval.batch_size = 16
  config.eval.max_sequences = 32
  config.eval.bound_steps = "4"
  config.sampler.steps = 8
  config.sampler.num_samples = 4
  return config
