"""MD4 "medium" on OpenWebText: owt_small with 24 layers, 16 heads, width 1024 (docs/method.md)."""

from configs import owt_small


def get_config():
  config = owt_small.get_config()
  config.model.num_layers = 24
  config.model.width = 1024
  config.model.num_heads = 16
  return config
