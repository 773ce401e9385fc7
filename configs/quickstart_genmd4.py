"""The quick start with GenMD4: the same data, model and budget as configs/quickstart.py, with a learned
masking schedule per character (objective="genmd4"), so the two bounds can be compared side by side."""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.objective = "genmd4"
  config.diffusion.genmd4.initial_power = 1.0  # starts as MD4's linear schedule
  return config
