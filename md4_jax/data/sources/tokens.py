"""`tokens`: token ids the user already has (data.path: a .npy, or a raw .bin like nanoGPT's; data/token_files.py),
decoded with data.tokenizer (byte or gpt2, whichever made them); the last data.eval_fraction is held out."""

import ml_collections

from md4_jax.data import data_file, token_files
from md4_jax.data import modality as modalities
from md4_jax.data.sources.text import stream_data, tokenizer_for
from md4_jax.errors import UserError

KIND = "source"
MODALITY = "text"


def config_group() -> ml_collections.ConfigDict:
  """data.tokens.*: gathered by configs/base.py."""
  group = ml_collections.ConfigDict()
  group.vocab_size = 0  # ids are in [0, vocab_size)
  group.token_dtype = ""  # .bin files: "uint16" (default), "uint32" or "int32"
  return group


def load(data_config, split: str, saved):
  del split
  if data_config.tokenizer == "char":
    raise UserError("data.source='tokens' holds token ids, not text: set data.tokenizer to 'byte' or "
                    "'gpt2' (whichever made the ids)")
  own = data_config.tokens
  ids = token_files.load_token_file(data_file(data_config), own.vocab_size, own.token_dtype)
  tokenizer = saved.tokenizer if saved else tokenizer_for(data_config)
  if tokenizer.vocab_size != own.vocab_size:
    raise UserError(f"data.tokens.vocab_size={own.vocab_size} but the {tokenizer.name} tokenizer has "
                    f"{tokenizer.vocab_size} ids; set data.tokens.vocab_size={tokenizer.vocab_size}")
  return stream_data(tokenizer, *token_files.split_tail(ids, data_config.eval_fraction), data_config.seq_len)


def modality(data_config) -> modalities.Text:
  return modalities.Text(data_config.tokens.vocab_size, data_config.seq_len)
