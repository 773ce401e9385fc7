"""The quick start's block-diffusion sibling (BD3-LM): the same data, transformer size, optimizer and budget,
blocks of 4 characters generated left to right, so its held-out bound sits beside MD4's and AR's. Its network
has no time input (blocks differ in t: 1,056,768 parameters against MD4's 1,499,136), and each step scores the
noisy and the clean copy of a sequence, so a step costs more than MD4's (README: bound and time)."""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.objective = "bd3"
  config.diffusion.bd3.block_size = 4
  return config
