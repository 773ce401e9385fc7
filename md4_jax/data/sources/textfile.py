"""`textfile`: the user's UTF-8 file at data.path (local or gs://); a char tokenizer spans the training part's
characters (or data.tokenizer's vocabulary); the last data.eval_fraction of the text is held out."""

from md4_jax.data import corpora, data_file
from md4_jax.data.sources.text import nominal_modality, plain_text_data, split_text, tokenizer_for

KIND = "source"
MODALITY = "text"


def load(data_config, split: str, saved):
  del split
  train_text, eval_text = split_text(corpora.read_text_file(data_file(data_config)), data_config.eval_fraction)
  tokenizer = saved.tokenizer if saved else tokenizer_for(data_config, train_text)
  return plain_text_data(data_config, tokenizer, train_text, eval_text, f"data.path={data_config.path}")


def modality(data_config):
  """A textfile's character set is the file's: read it (other tokenizers need no data)."""
  if data_config.tokenizer == "char":
    return load(data_config, "validation", None).modality
  return nominal_modality(data_config)
