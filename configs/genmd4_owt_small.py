"""GenMD4-S on OpenWebText: configs/owt_small.py with a learned schedule per GPT-2 token.

Published: OpenWebText validation perplexity <= 21.80 (MD4 <= 22.13), Shi et al. 2024. Settings from
the reference code's configs/genmd4/openwebtext.py (the paper's appendix was not readable offline):
power 1 at the start, t1 = 1e-3, learning rate 3e-4, batch 512, 1M steps, EMA 0.9999. Differences from
the reference: its vocabulary is 50,259 (two ids beyond GPT-2's 50,257, never seen in the data; ours
is GPT-2's 50,257); the (1 - t1) factor, learning-rate floor and gradient clipping as in
configs/genmd4_text8.py. A train step runs the network on two draws of z_t (about twice MD4's
cost, benchmarks/RESULTS.md); diffusion.genmd4.network_draws=1 back-propagates through one.

Prepare once: python launch.py --config configs/genmd4_owt_small.py --mode prepare
"""

from configs import owt_small


def get_config():
  config = owt_small.get_config()
  config.objective = "genmd4"
  config.diffusion.genmd4.initial_power = 1.0
  config.diffusion.genmd4.t_min = 1e-3
  config.diffusion.genmd4.network_draws = 2
  return config
