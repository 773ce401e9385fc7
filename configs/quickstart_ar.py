"""The quickstart's autoregressive sibling: the same data, transformer size, optimizer and budget, causal
attention and next-token loss, so the held-out bits/char of the two runs compare MD4 with AR directly. Its
network has no time input (1,056,768 parameters against MD4's 1,499,136: no adaLN modulations)."""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.objective = "ar"
  return config
