"""Samplers by name (`sampler.name`): pure functions over a `denoise(z_BxL, t_B) -> logits_BxLxV` callable.

`sample(denoise, key, schedule, z_BxL, settings)` fills every mask id in z_BxL (id = vocab_size) and never
changes any other token, so a prompt, a suffix or any spans are clamped by writing them into z_BxL (rows may
differ). Everything jits with static shapes and `lax` loops and returns (tokens_BxL, NFE), NFE being the number
of network calls actually made. See docs/sampling.md.

A sampler is `run(denoise, key, schedule, z_BxL, active_BxL, settings, vocab_size, time_dependent, order_BxL)
-> (z_BxL, nfe, order_BxL)` filling the masked positions where active_BxL; each module registers its own in
its module-level SAMPLERS table (grid.py: ancestral, mean, confidence; exact.py: exact), found here by
scanning this package, and semi_ar runs any of them block by block. An objective may swap one in (GenMD4's
exact is thinning.exact).
"""

import importlib
import pkgutil

import jax
import jax.numpy as jnp

from md4_jax.samplers import parallel, semi_ar
from md4_jax.samplers.draws import GRIDS, Settings, categorical, process_logits, record_order, time_grid, uniform  # noqa: F401
from md4_jax.samplers.guidance import guided  # noqa: F401
from md4_jax.samplers.semi_ar import semi_ar_blocks  # noqa: F401

# Every module of this package with a SAMPLERS table contributes its samplers, by name.
SAMPLERS = {name: run for info in pkgutil.iter_modules(__path__)
            for name, run in getattr(importlib.import_module(f"{__name__}.{info.name}"), "SAMPLERS", {}).items()}
INNER = tuple(SAMPLERS)  # what semi_ar runs inside each block
NAMES = (*INNER, "semi_ar")


def sample(denoise, key, schedule, z_BxL, settings: Settings, *, vocab_size: int, time_dependent: bool = True,
           return_order: bool = False, samplers: dict | None = None, module=None):
  """Fills the mask ids of z_BxL (tokens elsewhere are clamped). Returns (tokens_BxL, NFE as an int32 scalar),
  and with `return_order` also order_BxL: the sampler's clock (grid step or unmasking event, counted
  from 1 across semi_ar blocks) at which each position was filled, 0 for given tokens. Filled tokens
  never change, so `order` replays the reverse process exactly (the image strips draw it).

  `time_dependent=False` declares that `denoise` ignores t, which lets `settings.cache` skip a call whose
  input z equals the previous call's. `samplers`: the name -> sampler table to use (default SAMPLERS).
  `module`: the network's module, whose `extend` runs the cached passes of settings.kv_cache = 'prefix' or
  'dual' (sampler.name = 'parallel').
  """
  samplers = SAMPLERS if samplers is None else samplers
  if settings.name not in (*samplers, "semi_ar"):
    raise ValueError(f"unknown sampler {settings.name!r}; choose one of {NAMES}")
  if settings.kv_cache in parallel.CACHES:
    tokens_BxL, nfe, order_BxL = parallel.sample_cached(module, key, schedule, z_BxL, settings, vocab_size)
    return (tokens_BxL, nfe, order_BxL) if return_order else (tokens_BxL, nfe)
  z_BxL = jnp.asarray(z_BxL, jnp.int32)
  order_BxL = jnp.zeros_like(z_BxL)
  blocks = [(settings, z_BxL == vocab_size)]
  if settings.name == "semi_ar":
    blocks = semi_ar.blocks(settings, z_BxL.shape[1])
  nfe = jnp.zeros((), jnp.int32)
  for index, (block_settings, in_block) in enumerate(blocks):
    block_key = key if len(blocks) == 1 else jax.random.fold_in(key, index)
    z_BxL, block_nfe, order_BxL = samplers[block_settings.name](
        denoise, block_key, schedule, z_BxL, (z_BxL == vocab_size) & in_block, block_settings, vocab_size,
        time_dependent, order_BxL)
    nfe += block_nfe
  return (z_BxL, nfe, order_BxL) if return_order else (z_BxL, nfe)
