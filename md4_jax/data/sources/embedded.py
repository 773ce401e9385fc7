"""`embedded`: the Wikipedia excerpt that ships with md4-jax (206 pages, normalised the text8 way; CC BY-SA 3.0 and
GFDL, md4_jax/data/assets/README.md), characters over text8's 27-symbol alphabet; the last data.eval_fraction of
the text is held out. Nothing to download."""

from md4_jax.data import corpora
from md4_jax.data.sources.text import nominal_modality, plain_text_data, split_text, tokenizer_for

KIND = "source"
MODALITY = "text"
modality = nominal_modality


def load(data_config, split: str, saved):
  del split
  train_text, eval_text = split_text(corpora.embedded_wikipedia(), data_config.eval_fraction)
  tokenizer = saved.tokenizer if saved else tokenizer_for(data_config)
  return plain_text_data(data_config, tokenizer, train_text, eval_text, "data.source='embedded'")
