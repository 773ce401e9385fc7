"""Which config keys have an effect under which choices, and the refusal of a key set where it has none.

A key the run never reads (a transformer key on a U-Net run, a tokenizer on images, GenMD4's schedule keys
under MD4) would otherwise be accepted silently, and the user would believe it changed the run. A key left at
its default (configs/base.py) is fine anywhere; one set away from it where it has no effect is an error that
says what it applies to. Values of keys that do apply are checked by config_check and the modules they reach.

A part's own group (model.<backbone>.*, diffusion.<objective>.*, sampler.<sampler>.*, data.<source>.*: every
group under those roots is a part's) applies exactly when that part is chosen, by construction; SCOPES lists the
keys that several parts share, and the rules inside a part.
"""

from md4_jax import parts, samplers
from md4_jax.data import sources
from md4_jax.errors import UserError

_LOCAL_TEXT = ("embedded", "textfile", "tokens")  # text sources whose held-out split is the stream's tail


def _text(config) -> bool:
  return sources.get(config.data.source).kind == "text"


def chosen_parts(config) -> dict:
  """{root: (the config key that chooses, the short names of the parts chosen)}: whose groups apply (semi_ar's
  inner sampler only under semi_ar)."""
  names = {**parts.named(config), "sampler": samplers.chosen(config.sampler)}
  return {parts.KINDS[kind].root: (parts.KINDS[kind].key, {parts.short_name(name) for name in kind_names})
          for kind, kind_names in names.items()}


def _part_group_scope(key: str, config, groups: set):
  """(applies, what) for a key inside a part's own group, else None. groups: the dotted names of part groups."""
  root, _, rest = key.partition(".")
  name = rest.partition(".")[0]
  if f"{root}.{name}" not in groups:
    return None
  choosing_key, chosen = chosen_parts(config)[root]
  part = parts.module_paths(config).get(name, name)  # a part outside md4_jax: its module path
  what = f"{choosing_key}={part!r} (its own keys)"
  if root == "sampler" and name in samplers.INNER:
    what = f"sampler.name={part!r} (or 'semi_ar' with sampler.semi_ar.inner={part!r})"
  return name in chosen, what


def part_groups(keys) -> set:
  """The part groups among dotted `keys`: "model.transformer" for "model.transformer.width", and so on."""
  return {".".join(key.split(".")[:2]) for key in keys if key.count(".") >= 2 and key.split(".")[0] in parts.ROOTS}


# (key or "group." prefix, whether it has an effect on this config, what it applies to). First match wins.
SCOPES = (
    ("data.tokenizer", _text, "text sources"),
    ("data.tokenizer_path", lambda c: _text(c) and c.data.tokenizer in ("gpt2", "hf"),
     "data.tokenizer='gpt2' or 'hf'"),
    ("data.seq_len", _text, "text sources (an image's length is height x width x channels)"),
    ("data.path", lambda c: c.data.source in ("textfile", "tokens"), "data.source='textfile' or 'tokens'"),
    ("data.eval_fraction", lambda c: c.data.source in _LOCAL_TEXT,
     "data.source='embedded', 'textfile' or 'tokens' (the other sources have their own held-out splits)"),
    ("model.transformer.mlp_ratio", lambda c: not c.model.transformer.mlp_hidden,
     "model.transformer.mlp_hidden=0 (a set mlp_hidden is the GLU's size itself)"),
    ("model.transformer.scan_unroll", lambda c: c.model.transformer.scan_layers,
     "model.transformer.scan_layers=True (it unrolls the loop over the transformer's stacked layers)"),
    ("model.init_step", lambda c: bool(c.model.init_from), "model.init_from (an md4-jax workdir's checkpoint)"),
    ("model.label_dropout", lambda c: c.model.class_conditional, "model.class_conditional=True"),
    ("sampler.kv_cache", lambda c: c.objective == "bd3" or c.sampler.name == "parallel", "objective='bd3' (an "
     "exact cache of finished blocks) or sampler.name='parallel' (approximate caches)"),
    ("sampler.stop_at_end", lambda c: c.objective == "bd3", "objective='bd3' (it draws block by block)"),
    ("sampler.parallel.cache_refresh", lambda c: c.sampler.kv_cache in ("prefix", "dual"),
     "sampler.kv_cache='prefix' or 'dual'"),
    *((f"diffusion.{name}", lambda c: c.objective != "ar", "the diffusion objectives (objective='ar' has no "
       "masking schedule)") for name in ("schedule", "timesteps", "antithetic")),
    ("diffusion.anneal_steps", lambda c: c.objective == "md4", "objective='md4'"),
    ("diffusion.shift", lambda c: c.objective in ("md4", "genmd4", "bd3"), "objective='md4', 'genmd4' or 'bd3'"),
    ("sampler.block_length", lambda c: c.sampler.name in ("semi_ar", "parallel"), "sampler.name='semi_ar' or "
     "'parallel'"),
    ("eval.zero_shot", lambda c: c.eval.suite == "zero_shot", "eval.suite='zero_shot'"),
    ("eval.samplers", lambda c: c.eval.suite == "samples", "eval.suite='samples'"),
    ("eval.judge", lambda c: c.eval.suite == "samples", "eval.suite='samples'"),
    ("wandb.", lambda c: bool(c.wandb.project), "wandb.project (the W&B project to log to)"),
)


def _row_scope(key: str, config):
  return next(((applies(config), what) for name, applies, what in SCOPES
               if key == name or (name.endswith(".") and key.startswith(name))), None)


def check_applicable(flat: dict, config, defaults: dict) -> None:
  """Refuses a key set away from its default (`defaults`: the config's schema, flattened) where it has no effect.

  flat: the config flattened ({"a.b": value})."""
  groups = part_groups(defaults)
  for key, value in flat.items():
    if value == defaults.get(key, value):
      continue
    for scope in (_part_group_scope(key, config, groups), _row_scope(key, config)):
      if scope is not None and not scope[0]:
        raise UserError(f"{key}={value!r} has no effect on this run: it applies to {scope[1]}. Remove it (or leave "
                        f"it at its default {defaults[key]!r}), or choose what it applies to")
