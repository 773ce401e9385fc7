"""GenMD4 on text8: configs/text8.py (MD4's published small model) with a learned schedule per character.

Published: text8 <= 1.34 bits/char (MD4 <= 1.37), Shi et al. 2024. Settings from the reference code's
configs/genmd4/text8.py (the paper's appendix was not readable offline): poly schedule starting at
power 1, t1 = 1e-3, learning rate 3e-4, weight decay 0.03, two z_t draws with the leave-one-out
REINFORCE term. Differences from the reference: it also sets dropout 0.05, which our transformer does
not have; it integrates over [t1, 1] without the (1 - t1) factor of the estimator (ours has it); its
learning rate decays to 0 (ours to 10%); it clips no gradients (ours at 1.0, base.py).

Prepare once: python launch.py --config configs/genmd4_text8.py --mode prepare
"""

from configs import text8


def get_config():
  config = text8.get_config()
  config.objective = "genmd4"
  config.diffusion.genmd4.initial_power = 1.0
  config.diffusion.genmd4.t_min = 1e-3
  config.diffusion.genmd4.network_draws = 2
  config.train.learning_rate = 3e-4
  config.train.weight_decay = 0.03
  return config
