"""The quick start's AR run adapted into block diffusion (blocks of 4), or with `:md4` into MD4: the AR weights are
the start, the objective changes, and training goes on for 300 steps (README: "Adapting an autoregressive run").

  python launch.py --config configs/quickstart_ar.py --workdir runs/quickstart_ar
  python launch.py --config configs/adapt_quickstart.py --workdir runs/adapt_bd3
  python launch.py --config configs/adapt_quickstart.py:md4 --workdir runs/adapt_md4

model.init_from names the AR run's workdir (change it with --config.model.init_from=DIR); its network keys and
EMA params carry over. Each variant takes what measured best on the quick start (benchmarks/RESULTS.md,
"Adapting the quick start's AR run"; benchmarks/adaptation.py tries the others): BD3 with shifted prediction
(diffusion.shift: output i scores token i from input i - 1, as the AR head was trained) at lr 1e-3 (2.77 bits/char
at step 300); MD4 with neither the shift nor attention annealing (diffusion.anneal_steps), at the quick start's
lr 2e-3 (3.13). Both networks are time-independent, as the AR one is (MD4's quick start reads t).
"""

from configs import quickstart

VARIANTS = ("bd3", "md4")


def get_config(variant: str = "bd3"):
  if variant not in VARIANTS:
    raise ValueError(f"configs/adapt_quickstart.py:{variant}: choose one of {VARIANTS}")
  config = quickstart.get_config()
  config.objective = variant
  config.model.init_from = "runs/quickstart_ar"
  config.model.time_conditioning = False  # the AR weights have no time input
  if variant == "bd3":
    config.diffusion.bd3.block_size = 4
    config.diffusion.shift = True
    config.train.learning_rate = 1e-3
  config.train.num_steps = 300
  config.train.warmup_steps = 20  # the weights are trained already: a short warm-up
  config.train.eval_every = 100
  config.train.checkpoint_every = 100
  return config
