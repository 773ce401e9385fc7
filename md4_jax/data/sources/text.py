"""What the text sources share: a tokenizer from the config, token streams cut into rows of data.seq_len, a text
split at its tail, and the vocabulary known without data.

A run's saved tokenizer (in its modality) is reused when given, so a textfile's character vocabulary stays the one
training built.
"""

from md4_jax.data import modality as modalities
from md4_jax.data import tokenizers
from md4_jax.data.rows import Data, StreamRows
from md4_jax.errors import UserError


def tokenizer_for(data_config, train_text: str | None = None):
  """data.tokenizer's tokenizer; a char tokenizer spans `train_text`'s characters (a textfile) or else text8's."""
  if data_config.tokenizer == "char" and train_text is not None:
    return tokenizers.CharTokenizer.from_text(train_text)
  if data_config.tokenizer == "char":
    return tokenizers.CharTokenizer(tokenizers.TEXT8_ALPHABET)
  return tokenizers.make_tokenizer(data_config.tokenizer, bpe_path=data_config.tokenizer_path)


def stream_data(tokenizer, train_tokens, eval_tokens, seq_len: int) -> Data:
  """Streams -> rows; the held-out stream keeps its final partial row, padded."""
  return Data(modalities.Text.of(tokenizer, seq_len), StreamRows(train_tokens, seq_len),
              StreamRows(eval_tokens, seq_len, pad_last=True))


def split_text(text: str, eval_fraction: float) -> tuple[str, str]:
  if not 0.0 < eval_fraction < 1.0:
    raise UserError(f"data.eval_fraction={eval_fraction} must be strictly between 0 and 1")
  num_eval = max(1, int(len(text) * eval_fraction))
  return text[:-num_eval], text[-num_eval:]


def plain_text_data(data_config, tokenizer, train_text: str, eval_text: str, where: str) -> Data:
  """A text's training and held-out parts as rows of tokens (`where` names the text in errors)."""
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
  return stream_data(tokenizer, tokenizer.encode(train_text), tokenizer.encode(eval_text), data_config.seq_len)


def nominal_modality(data_config) -> modalities.Text:
  """The vocabulary and length without reading data: data.tokenizer's (char: text8's alphabet)."""
  known = getattr(tokenizers.tokenizer_class(data_config.tokenizer), "vocab_size", None)  # a class's own size
  vocab_size = known if isinstance(known, int) else tokenizer_for(data_config).vocab_size  # char, hf: read it
  return modalities.Text(vocab_size, data_config.seq_len)
