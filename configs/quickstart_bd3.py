"""The quick start's block-diffusion sibling (BD3-LM): the same data, transformer size, optimizer and budget,
blocks of 4 characters generated left to right, so its held-out bound sits beside MD4's and AR's."""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.objective = "bd3"
  config.diffusion.block_size = 4
  return config
