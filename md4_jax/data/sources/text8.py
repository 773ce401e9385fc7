"""`text8`: Mahoney's first 10^8 characters of Wikipedia (27 symbols), prepared once from text8.zip
(data/text8.py), with the standard 90M / 5M / 5M split: eval.split picks validation or test."""

from md4_jax.data import data_dir, prepare_into, read_prepared, tokenizers
from md4_jax.data import text8 as release
from md4_jax.data.sources.text import nominal_modality, stream_data

KIND = "source"
MODALITY = "text"
HELD_OUT = ("validation", "test")
modality = nominal_modality


def load(data_config, split: str, saved):
  del saved
  root = data_dir(data_config)
  read_prepared(data_config, release.prepared_dir(root))
  splits = release.load(root)
  return stream_data(tokenizers.CharTokenizer(tokenizers.TEXT8_ALPHABET), splits["train"], splits[split],
                     data_config.seq_len)


def prepare(data_config) -> str:
  root = data_dir(data_config)
  return prepare_into(data_config, release.prepared_dir(root), lambda: release.prepare(root, data_config.manual_dir))
