"""What the packed hub sources share (openwebtext, fineweb_edu, lm1b): rows packed by `--mode prepare` from the
hub's parquet shards (data/hub_datasets.py), every position a real token, and their own held-out rules there."""

from md4_jax.data import data_dir, hub_datasets, prepare_into, read_prepared, source_subset, tokenizers
from md4_jax.data import modality as modalities
from md4_jax.data.rows import Data, RecordRows
from md4_jax.data.sources.text import nominal_modality, tokenizer_for

MODALITY = "text"
modality = nominal_modality


def load(data_config, split: str, saved) -> Data:
  del split
  root, subset = data_dir(data_config), source_subset(data_config)
  read_prepared(data_config, hub_datasets.prepared_dir(data_config.source, root, data_config.seq_len, subset))
  splits, meta = hub_datasets.load(data_config.source, root, seq_len=data_config.seq_len, subset=subset)
  tokenizer = saved.tokenizer if saved else tokenizers.tokenizer_from_json(meta["tokenizer"])
  return Data(modalities.Text.of(tokenizer, data_config.seq_len), RecordRows(splits["train"]),
              RecordRows(splits["validation"]))


def prepare(data_config) -> str:
  root, subset = data_dir(data_config), source_subset(data_config)
  return prepare_into(
      data_config, hub_datasets.prepared_dir(data_config.source, root, data_config.seq_len, subset),
      lambda: hub_datasets.prepare(data_config.source, root, tokenizer=tokenizer_for(data_config),
                                   seq_len=data_config.seq_len, manual_dir=data_config.manual_dir,
                                   subset=subset, max_documents=data_config.max_documents))
