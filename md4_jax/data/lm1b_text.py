"""One Billion Word (LM1B): reading the released files and undoing their tokenization.

The release (1-billion-word-language-modeling-benchmark-r13output) holds one
sentence per line, already tokenized with spaces around punctuation and split
clitics ("do n't", "it 's", "( a )"). Models with a subword tokenizer should
see normal text, so `detokenize` joins those pieces back. Train files are
`training-monolingual.tokenized.shuffled/news.en-*`; the standard held-out
split is `heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050`.
"""

import pathlib
import re
import tarfile

from md4_jax.data.download import fetch
from md4_jax.errors import UserError

URL = "http://www.statmt.org/lm-benchmark/1-billion-word-language-modeling-benchmark-r13output.tar.gz"
TOP = "1-billion-word-language-modeling-benchmark-r13output"
TRAIN_GLOB = "training-monolingual.tokenized.shuffled/news.en-*"
HELDOUT_FILE = "heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050"

_RULES = [
    (r" (n't|'s|'re|'ve|'ll|'m|'d)\b", r"\1"),  # clitics: "do n't" -> "don't"
    (r" ([.,!?;:%)\]}])", r"\1"),  # no space before closing punctuation
    (r"([(\[{$]) ", r"\1"),  # no space after opening brackets and currency
    (r'" (.*?) "', r'"\1"'),  # quoted spans: '" a b "' -> '"a b"'
    (r" - ", "-"),  # hyphenated words split by the tokenizer
    (r"\s+", " "),
]


def detokenize(line: str) -> str:
  """LM1B's tokenized sentence -> ordinary text."""
  text = line.strip()
  for pattern, replacement in _RULES:
    text = re.sub(pattern, replacement, text)
  return text.strip()


def download(dest_dir: pathlib.Path) -> pathlib.Path:
  """Downloads and extracts the release into dest_dir (fails within seconds when offline)."""
  extracted = dest_dir / TOP
  if not extracted.is_dir():
    archive = fetch(URL, dest_dir / "lm1b.tar.gz", sha256=None, what="the One Billion Word release",
                    manual_hint="or extract it yourself and pass --config.data.manual_dir=DIR")
    with tarfile.open(archive) as tar:
      tar.extractall(dest_dir, filter="data")
  return dest_dir


def split_files(root: pathlib.Path) -> dict[str, list[pathlib.Path]]:
  """{"train": [...], "validation": [heldout file]} under an extracted release directory."""
  base = root / TOP if (root / TOP).is_dir() else root
  files = {"train": sorted(base.glob(TRAIN_GLOB)), "validation": sorted(base.glob(HELDOUT_FILE))}
  if not files["train"] or not files["validation"]:
    raise UserError(f"no LM1B files under {root}: expected {TOP}/{TRAIN_GLOB} and {TOP}/{HELDOUT_FILE}. "
                    f"Download {URL}, extract it into a directory and pass --config.data.manual_dir=DIR")
  return files


def sentences(files: list[pathlib.Path]):
  """Detokenized sentences of `files`, in order."""
  for path in files:
    with path.open(encoding="utf-8") as lines:
      for line in lines:
        text = detokenize(line)
        if text:
          yield text
