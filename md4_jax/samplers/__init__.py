"""Samplers by name (`sampler.name`): pure functions over a `denoise(z_BxL, t_B) -> logits_BxLxV` callable.

`sample(denoise, key, schedule, z_BxL, settings)` fills every mask id in z_BxL (id = vocab_size) and never
changes any other token, so a prompt, a suffix or any spans are clamped by writing them into z_BxL (rows may
differ). Everything jits with static shapes and `lax` loops and returns (tokens_BxL, NFE), NFE being the number
of network calls actually made. See docs/sampling.md.

A sampler is `run(denoise, key, schedule, z_BxL, active_BxL, settings, vocab_size, time_dependent, order_BxL)
-> (z_BxL, nfe, order_BxL)` filling the masked positions where active_BxL, in its module's SAMPLERS table
({name: run}); next to it, its own keys (`config_group()`, sampler.<name>.*) and checks
(`check_config(config, length)`, length = a sample's positions). Built-in modules are listed in BUILTIN, one
outside the package is named by its module path (md4_jax/parts.py; its keys reach it as `settings.option(key)`);
semi_ar runs any of them block by block. An objective may swap one in (GenMD4's exact is thinning.exact).
"""

import jax
import jax.numpy as jnp

from md4_jax import parts
from md4_jax.errors import UserError
from md4_jax.samplers import confidence, exact, grid, parallel, parallel_cache, remdm, semi_ar
from md4_jax.samplers.draws import GRIDS, Settings, categorical, process_logits, record_order, time_grid, uniform  # noqa: F401
from md4_jax.samplers.guidance import guided  # noqa: F401
from md4_jax.samplers.semi_ar import semi_ar_blocks  # noqa: F401

BUILTIN = {"ancestral": grid, "mean": grid, "confidence": confidence, "exact": exact, "parallel": parallel,
           "remdm": remdm, "semi_ar": semi_ar}
SAMPLERS = {name: module.SAMPLERS[name] for name, module in BUILTIN.items() if name in getattr(module, "SAMPLERS", {})}
INNER = tuple(SAMPLERS)  # what semi_ar runs inside each block
NAMES = (*INNER, "semi_ar")
KV_CACHES = ("none", "exact", *parallel.CACHES)  # sampler.kv_cache: "exact" is block diffusion's (objectives/bd3.py)
GROUPS = tuple(name for name, module in BUILTIN.items() if hasattr(module, "config_group"))  # sampler.<name>.*


def settings(sampler_cfg) -> Settings:
  """config.sampler as Settings (the built-in samplers' groups flattened into its fields)."""
  return Settings.from_config(sampler_cfg, GROUPS)


def get(name: str):
  """The sampler module called `name` (built-in, or a module path); UserError naming the choices."""
  return parts.find("sampler", name, BUILTIN)


def chosen(sampler_cfg) -> tuple[str, ...]:
  """The samplers a config runs: sampler.name, and semi_ar's inner sampler. Their groups' keys apply."""
  return (sampler_cfg.name, sampler_cfg.semi_ar.inner) if sampler_cfg.name == "semi_ar" else (sampler_cfg.name,)


def run_of(name: str, table: dict):
  """The run function called `name`: table's, or the SAMPLERS entry of the module at a dotted path."""
  return table[name] if name in table else _outside_run(name, get(name))


def _outside_run(name: str, module):
  """The run function of the sampler outside md4_jax at module path `name` (its SAMPLERS entry)."""
  short = parts.short_name(name)
  if short not in getattr(module, "SAMPLERS", {}):
    raise UserError(f"sampler.name={name!r}: the module must define SAMPLERS = {{{short!r}: run}} (docs/design.md, "
                    "'Adding a part')")
  return module.SAMPLERS[short]


def check_config(config, length: int) -> None:
  """The sampler keys every sampler shares and each chosen sampler's own (UserError naming the key); `length`:
  the positions of a sample. (sampler.grid: time_grid refuses an unknown one.)"""
  sampler = config.sampler
  inner = sampler.semi_ar.inner
  inner_choices = INNER + ((inner,) if parts.is_module_path(inner) else ())  # or a sampler outside md4_jax
  for key, value, allowed in (("sampler.params", sampler.params, ("ema", "raw")),
                              ("sampler.kv_cache", sampler.kv_cache, KV_CACHES),
                              ("sampler.semi_ar.inner", inner, inner_choices)):
    if value not in allowed:
      raise UserError(f"config key {key!r} = {value!r}; choose one of {allowed}")
  if sampler.temperature < 0:
    raise UserError(f"sampler.temperature={sampler.temperature} must be >= 0 (0 = argmax)")
  if sampler.top_k < 0:
    raise UserError(f"sampler.top_k={sampler.top_k} must be >= 0 (0 = off)")
  if not 0.0 < sampler.top_p <= 1.0:
    raise UserError(f"sampler.top_p={sampler.top_p} must be in (0, 1] (1 = off)")
  for name in chosen(sampler):
    module = get(name)
    if parts.is_module_path(name):
      _outside_run(name, module)  # a module outside the package must have its run: refused now, not at the first sample
    if hasattr(module, "check_config"):
      try:
        module.check_config(config, length)
      except ValueError as error:
        raise UserError(str(error)) from None


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
  if settings.kv_cache in parallel.CACHES:
    tokens_BxL, nfe, order_BxL = parallel_cache.sample_cached(module, key, schedule, z_BxL, settings, vocab_size)
    return (tokens_BxL, nfe, order_BxL) if return_order else (tokens_BxL, nfe)
  z_BxL = jnp.asarray(z_BxL, jnp.int32)
  order_BxL = jnp.zeros_like(z_BxL)
  blocks = [(settings, z_BxL == vocab_size)]
  if settings.name == "semi_ar":
    blocks = semi_ar.blocks(settings, z_BxL.shape[1])
  nfe = jnp.zeros((), jnp.int32)
  for index, (block_settings, in_block) in enumerate(blocks):
    block_key = key if len(blocks) == 1 else jax.random.fold_in(key, index)
    z_BxL, block_nfe, order_BxL = run_of(block_settings.name, samplers)(
        denoise, block_key, schedule, z_BxL, (z_BxL == vocab_size) & in_block, block_settings, vocab_size,
        time_dependent, order_BxL)
    nfe += block_nfe
  return (z_BxL, nfe, order_BxL) if return_order else (z_BxL, nfe)
