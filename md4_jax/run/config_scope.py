"""Which config keys have an effect under which choices, and the refusal of a key set where it has none.

A key the run never reads (a transformer key on a U-Net run, a tokenizer on images, GenMD4's schedule keys
under MD4) would otherwise be accepted silently, and the user would believe it changed the run. A key left at
its default (configs/base.py) is fine anywhere; one set away from it where it has no effect is an error that
says what it applies to. Values of keys that do apply are checked by config_check and the modules they reach.
"""

from md4_jax.data import sources
from md4_jax.errors import UserError

_LOCAL_TEXT = ("embedded", "textfile", "tokens")  # text sources whose held-out split is the stream's tail


def _text(config) -> bool:
  return sources.get(config.data.source).kind == "text"


def _sampler_uses(config, name: str) -> bool:
  sampler = config.sampler
  return sampler.name == name or (sampler.name == "semi_ar" and sampler.inner == name)


# (key or "group." prefix, whether it has an effect on this config, what it applies to). First match wins.
SCOPES = (
    ("data.tokenizer", _text, "text sources"),
    ("data.tokenizer_path", lambda c: _text(c) and c.data.tokenizer == "gpt2", "data.tokenizer='gpt2'"),
    ("data.seq_len", _text, "text sources (an image's length is height x width x channels)"),
    ("data.vocab_size", lambda c: c.data.source == "tokens", "data.source='tokens'"),
    ("data.token_dtype", lambda c: c.data.source == "tokens", "data.source='tokens' (.bin files)"),
    ("data.path", lambda c: c.data.source in ("textfile", "tokens"), "data.source='textfile' or 'tokens'"),
    ("data.eval_fraction", lambda c: c.data.source in _LOCAL_TEXT,
     "data.source='embedded', 'textfile' or 'tokens' (the other sources have their own held-out splits)"),
    ("data.subset", lambda c: c.data.source in ("fineweb_edu", "imagenet64"), "data.source='fineweb_edu' or "
     "'imagenet64'"),
    ("model.unet.", lambda c: c.model.backbone == "unet", "model.backbone='unet'"),
    ("model.uvit.", lambda c: c.model.backbone == "uvit", "model.backbone='uvit'"),
    ("model.mlp_ratio", lambda c: c.model.backbone == "transformer" and not c.model.mlp_hidden,
     "model.backbone='transformer' with model.mlp_hidden=0 (a set mlp_hidden is the GLU's size itself)"),
    *((f"model.{name}", lambda c: c.model.backbone == "transformer", "model.backbone='transformer' (image "
       "backbones have their groups model.unet.* and model.uvit.*)")
      for name in ("num_layers", "width", "num_heads", "mlp_ratio", "mlp_hidden", "cond_dim", "positions")),
    ("model.scan_unroll", lambda c: c.model.backbone == "transformer" and c.model.scan_layers,
     "model.scan_layers=True (it unrolls the loop over the transformer's stacked layers)"),
    ("model.label_dropout", lambda c: c.model.class_conditional, "model.class_conditional=True"),
    ("diffusion.genmd4.", lambda c: c.objective == "genmd4", "objective='genmd4'"),
    *((f"diffusion.{name}", lambda c: c.objective == "bd3", "objective='bd3'")
      for name in ("block_size", "clip_low", "clip_high")),
    ("sampler.kv_cache", lambda c: c.objective == "bd3" or c.sampler.name == "parallel", "objective='bd3' (an "
     "exact cache of finished blocks) or sampler.name='parallel' (approximate caches)"),
    ("sampler.cache_refresh", lambda c: c.sampler.kv_cache in ("prefix", "dual"),
     "sampler.kv_cache='prefix' or 'dual'"),
    *((f"sampler.{name}", lambda c: _sampler_uses(c, "parallel"),
       "sampler.name='parallel' (or 'semi_ar' with sampler.inner='parallel')") for name in ("threshold", "fallback")),
    *((f"diffusion.{name}", lambda c: c.objective != "ar", "the diffusion objectives (objective='ar' has no "
       "masking schedule)") for name in ("schedule", "timesteps", "antithetic")),
    ("sampler.block_length", lambda c: c.sampler.name in ("semi_ar", "parallel"), "sampler.name='semi_ar' or "
     "'parallel'"),
    ("sampler.inner", lambda c: c.sampler.name == "semi_ar", "sampler.name='semi_ar'"),
    ("sampler.tokens_per_call", lambda c: _sampler_uses(c, "exact"),
     "sampler.name='exact' (or 'semi_ar' with sampler.inner='exact')"),
    ("sampler.choice_temperature", lambda c: _sampler_uses(c, "confidence"),
     "sampler.name='confidence' (or 'semi_ar' with sampler.inner='confidence')"),
    ("eval.zero_shot", lambda c: c.eval.suite == "zero_shot", "eval.suite='zero_shot'"),
    ("eval.samplers", lambda c: c.eval.suite == "samples", "eval.suite='samples'"),
    ("eval.judge", lambda c: c.eval.suite == "samples", "eval.suite='samples'"),
    ("wandb.", lambda c: bool(c.wandb.project), "wandb.project (the W&B project to log to)"),
)


def _scope(key: str):
  return next(((applies, what) for name, applies, what in SCOPES
               if key == name or (name.endswith(".") and key.startswith(name))), None)


def check_applicable(flat: dict, config, defaults: dict) -> None:
  """Refuses a key set away from its default (`defaults`: configs/base.py, flattened) where it has no effect.

  flat: the config flattened ({"a.b": value})."""
  for key, value in flat.items():
    scope = _scope(key)
    if scope is None or value == defaults.get(key, value) or scope[0](config):
      continue
    raise UserError(f"{key}={value!r} has no effect on this run: it applies to {scope[1]}. Remove it (or leave "
                    f"it at its default {defaults[key]!r}), or choose what it applies to")
