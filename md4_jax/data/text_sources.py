"""The text sources' loaders and preparers: token streams cut into rows of data.seq_len.

embedded / textfile / tokens hold out the last data.eval_fraction of their stream; text8 has its
90M / 5M / 5M split; the packed hub sources (openwebtext, fineweb_edu, lm1b) their own rules
(hub_datasets.py). A run's saved tokenizer (in its modality) is reused when given, so a textfile's
character vocabulary stays the one training built.
"""

from md4_jax.data import (
  corpora,
  data_dir,
  data_file,
  hub_datasets,
  prepare_into,
  read_prepared,
  text8,
  token_files,
  tokenizers,
)
from md4_jax.data import modality as modalities
from md4_jax.data.rows import Data, RecordRows, StreamRows
from md4_jax.errors import UserError


def _tokenizer(data_config, train_text: str | None = None):
  """data.tokenizer's tokenizer; a char tokenizer spans `train_text`'s characters (a textfile) or else text8's."""
  if data_config.tokenizer == "char" and train_text is not None:
    return tokenizers.CharTokenizer.from_text(train_text)
  if data_config.tokenizer == "char":
    return tokenizers.CharTokenizer(tokenizers.TEXT8_ALPHABET)
  return tokenizers.make_tokenizer(data_config.tokenizer, bpe_path=data_config.tokenizer_path)


def _text_data(tokenizer, train_tokens, eval_tokens, seq_len: int) -> Data:
  """Streams -> rows; the held-out stream keeps its final partial row, padded."""
  return Data(modalities.Text.of(tokenizer, seq_len), StreamRows(train_tokens, seq_len),
              StreamRows(eval_tokens, seq_len, pad_last=True))


def split_text(text: str, eval_fraction: float) -> tuple[str, str]:
  if not 0.0 < eval_fraction < 1.0:
    raise UserError(f"data.eval_fraction={eval_fraction} must be strictly between 0 and 1")
  num_eval = max(1, int(len(text) * eval_fraction))
  return text[:-num_eval], text[-num_eval:]


def load_embedded(data_config, split: str, saved) -> Data:
  """embedded: the Wikipedia excerpt shipped in gensim (a char tokenizer over text8's alphabet)."""
  del split
  train_text, eval_text = split_text(corpora.embedded_wikipedia(), data_config.eval_fraction)
  tokenizer = saved.tokenizer if saved else _tokenizer(data_config)
  return _plain_text_data(data_config, tokenizer, train_text, eval_text, "data.source='embedded'")


def load_textfile(data_config, split: str, saved) -> Data:
  """textfile: the user's file at data.path (a char tokenizer over the training part's characters)."""
  del split
  train_text, eval_text = split_text(corpora.read_text_file(data_file(data_config)), data_config.eval_fraction)
  tokenizer = saved.tokenizer if saved else _tokenizer(data_config, train_text)
  return _plain_text_data(data_config, tokenizer, train_text, eval_text, f"data.path={data_config.path}")


def _plain_text_data(data_config, tokenizer, train_text: str, eval_text: str, where: str) -> Data:
  if tokenizer.name == "char":  # held-out characters never seen in training cannot be encoded
    known = set(tokenizer.alphabet)
    kept = "".join(c for c in eval_text if c in known)
    # Else the first evaluation would find no token to score. (A file too short to train on gets that
    # error instead, from load_data: a longer file is the fix either way, but that one says why.)
    if not kept and len(train_text) >= data_config.seq_len:
      raise UserError(f"the held-out part of {where} (its last {len(eval_text)} characters, data.eval_fraction="
                      f"{data_config.eval_fraction}) has only characters the training part never uses, so nothing "
                      "is left to evaluate: use a longer file whose end is text like the rest, or a larger "
                      "data.eval_fraction")
    eval_text = kept
  return _text_data(tokenizer, tokenizer.encode(train_text), tokenizer.encode(eval_text), data_config.seq_len)


def load_token_file(data_config, split: str, saved) -> Data:
  """tokens: a user's .npy / .bin of ids in [0, data.tokens.vocab_size)."""
  del split
  if data_config.tokenizer == "char":
    raise UserError("data.source='tokens' holds token ids, not text: set data.tokenizer to 'byte' or "
                    "'gpt2' (whichever made the ids)")
  tokens = token_files.load_token_file(data_file(data_config), data_config.tokens.vocab_size, data_config.tokens.token_dtype)
  tokenizer = saved.tokenizer if saved else _tokenizer(data_config)
  if tokenizer.vocab_size != data_config.tokens.vocab_size:
    raise UserError(f"data.tokens.vocab_size={data_config.tokens.vocab_size} but the {tokenizer.name} tokenizer has "
                    f"{tokenizer.vocab_size} ids; set data.tokens.vocab_size={tokenizer.vocab_size}")
  return _text_data(tokenizer, *token_files.split_tail(tokens, data_config.eval_fraction), data_config.seq_len)


def load_text8(data_config, split: str, saved) -> Data:
  del saved
  root = data_dir(data_config)
  read_prepared(data_config, text8.prepared_dir(root))
  splits = text8.load(root)
  return _text_data(tokenizers.CharTokenizer(tokenizers.TEXT8_ALPHABET), splits["train"], splits[split],
                    data_config.seq_len)


def prepare_text8(data_config) -> str:
  root = data_dir(data_config)
  return prepare_into(data_config, text8.prepared_dir(root), lambda: text8.prepare(root, data_config.manual_dir))


def load_packed(data_config, split: str, saved) -> Data:
  """openwebtext, fineweb_edu, lm1b: rows packed by `prepare_packed` (every position a real token)."""
  del split
  root = data_dir(data_config)
  read_prepared(data_config, hub_datasets.prepared_dir(data_config.source, root, data_config.seq_len,
                                                       data_config.subset))
  splits, meta = hub_datasets.load(data_config.source, root, seq_len=data_config.seq_len, subset=data_config.subset)
  tokenizer = saved.tokenizer if saved else tokenizers.tokenizer_from_json(meta["tokenizer"])
  return Data(modalities.Text.of(tokenizer, data_config.seq_len), RecordRows(splits["train"]),
              RecordRows(splits["validation"]))


def prepare_packed(data_config) -> str:
  root = data_dir(data_config)
  return prepare_into(
      data_config, hub_datasets.prepared_dir(data_config.source, root, data_config.seq_len, data_config.subset),
      lambda: hub_datasets.prepare(data_config.source, root, tokenizer=_tokenizer(data_config),
                                   seq_len=data_config.seq_len, manual_dir=data_config.manual_dir,
                                   subset=data_config.subset, max_documents=data_config.max_documents))


def nominal_modality(data_config) -> modalities.Text:
  """The vocabulary and length without reading data: data.tokenizer's (char: text8's alphabet)."""
  tokenizer = data_config.tokenizer
  vocab_size = len(tokenizers.TEXT8_ALPHABET) if tokenizer == "char" else tokenizers.tokenizer_class(tokenizer).vocab_size
  return modalities.Text(vocab_size, data_config.seq_len)


def textfile_modality(data_config) -> modalities.Text:
  """A textfile's character set is the file's: read it (other tokenizers need no data)."""
  if data_config.tokenizer == "char":
    return load_textfile(data_config, "validation", None).modality
  return nominal_modality(data_config)


def token_file_modality(data_config) -> modalities.Text:
  return modalities.Text(data_config.tokens.vocab_size, data_config.seq_len)
