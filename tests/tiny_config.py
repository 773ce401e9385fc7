"""A tiny model for tests and smoke runs: trains in seconds on a CPU."""

from configs import base


def get_config():
  config = base.get_config()
  config.data.source = "textfile"
  config.data.seq_len = 16
  config.data.eval_fraction = 0.1
  config.model.transformer.num_layers = 1
  config.model.transformer.width = 32
  config.model.transformer.num_heads = 2
  config.train.num_steps = 12
  config.train.batch_size = 8
  config.train.learning_rate = 1e-2
  config.train.warmup_steps = 2
  config.train.log_every = 2
  config.train.eval_every = 6
  config.train.checkpoint_every = 4
  config.eval.batch_size = 8
  config.eval.max_sequences = 16
  config.sampler.steps = 8
  config.sampler.num_samples = 2
  return config
