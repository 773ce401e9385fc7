"""The default run: MD4 on the embedded Wikipedia excerpt, character level, 4-8 minutes on 2 CPU cores (README)."""

from configs import base


def get_config():
  config = base.get_config()
  config.data.source = "embedded"
  config.data.seq_len = 128
  config.model.transformer.num_layers = 4
  config.model.transformer.width = 128
  config.model.transformer.num_heads = 4
  config.train.num_steps = 700
  config.train.batch_size = 32
  config.train.learning_rate = 2e-3
  config.train.eval_every = 250
  config.train.checkpoint_every = 250
  config.train.steps_per_call = 10  # same updates; a tenth of the CPU kernel's page zeroing (docs/scaling.md)
  return config
