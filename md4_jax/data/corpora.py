"""Text corpora: the embedded Wikipedia excerpt and local text files.

The embedded corpus is a 206-page English Wikipedia dump that ships with the
package (md4_jax/data/assets/enwiki_excerpt.xml.bz2, gensim's test file; CC BY-SA),
so the default run needs no download. It is normalised the text8 way (Mahoney's wikifil rules):
article text only, markup removed, link targets replaced by their labels,
digits spelled out, lowercase a-z and single spaces.
"""

import bz2
import functools
import html
import pathlib
import re

from md4_jax.data import shipped
from md4_jax.errors import UserError

_DIGITS = dict(zip("0123456789", " zero one two three four five six seven eight nine ".split(" ")[1:-1]))

# Applied in order to the wikitext of one page (after HTML unescaping).
_WIKIFIL_RULES = [
    (r"<ref[^<]*?/>", " "),  # self-closing references
    (r"<ref[^<]*?>.*?</ref>", " "),  # references with their text
    (r"<[^>]*>", " "),  # any other xml/html tag
    (r"\{\|.*?\|\}", " "),  # tables
    (r"\{\{[^{}]*\}\}", " "),  # templates (innermost; repeated below for nesting)
    (r"\[\[(?:image|file|category|[a-z\-]{2,12}):[^\[\]]*(?:\[\[[^\[\]]*\]\][^\[\]]*)*\]\]", " "),
    (r"\[\[[^\[\]|]*\|([^\[\]]*)\]\]", r"\1"),  # [[target|label]] -> label
    (r"\[\[([^\[\]]*)\]\]", r"\1"),  # [[target]] -> target
    (r"\[(?:https?|ftp)://[^ \]]*( [^\]]*)?\]", r"\1"),  # [url label] -> label
    (r"(?:https?|ftp)://\S+", " "),  # bare urls
    (r"&[a-z]+;", " "),  # entities left after unescaping
]


def normalize_wikitext(wikitext: str) -> str:
  """One page of wikitext -> text8-style text (a-z and single spaces)."""
  text = html.unescape(wikitext).lower()
  for pattern, replacement in _WIKIFIL_RULES:
    previous = None
    while previous != text:  # templates and links nest; strip until stable
      previous, text = text, re.sub(pattern, replacement, text, flags=re.DOTALL)
  text = re.sub(r"[0-9]", lambda m: f" {_DIGITS[m.group(0)]} ", text)
  text = re.sub(r"[^a-z]+", " ", text)
  return text.strip()


def normalize_wiki_dump(xml: str) -> str:
  """A MediaWiki XML dump -> the text8-normalised article texts, joined by spaces."""
  pages = re.findall(r"<text[^>]*>(.*?)</text>", xml, flags=re.DOTALL)
  texts = (normalize_wikitext(p) for p in pages if not p.lstrip().lower().startswith("#redirect"))
  return " ".join(t for t in texts if t)


@functools.lru_cache(maxsize=1)
def embedded_wikipedia() -> str:
  """The embedded corpus as text8-normalised text (about 2.9M characters)."""
  return normalize_wiki_dump(bz2.decompress(shipped.read_bytes("enwiki_excerpt.xml.bz2")).decode("utf-8"))


def read_text_file(path: str) -> str:
  """A local UTF-8 text file, with clear errors for the usual mistakes."""
  if not path:
    raise UserError("data.source='textfile' needs a file: pass --config.data.path=/path/to/file.txt")
  file = pathlib.Path(path).expanduser()
  if not file.is_file():
    raise UserError(f"data.path={path!r} does not exist or is not a file; pass an existing UTF-8 text file")
  try:
    text = file.read_text(encoding="utf-8")
  except UnicodeDecodeError as error:
    raise UserError(f"data.path={path!r} is not valid UTF-8 ({error}); convert it to UTF-8 first") from error
  if not text.strip():
    raise UserError(f"data.path={path!r} is empty; it needs at least a few sequences of text")
  return text
