"""The quickstart's autoregressive sibling: the same data, transformer, optimizer and budget, causal
attention and next-token loss, so the held-out bits/char of the two runs compare MD4 with AR directly."""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.objective = "ar"
  return config
