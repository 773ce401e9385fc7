"""The standard detokenizers of the zero-shot benchmarks: undo the tokenization the files were released in.

WikiText, PTB and LM1B ship word-tokenized text ("don 't", "1 @,@ 000", "( a )"); GPT-2-tokenized
models are scored on text that reads as ordinary prose. These are the rules the SEDD / MDLM / MD4
tables use (Megatron-LM's, via SEDD's data.py), as ordered substitution tables: `str` rows are
literal replacements, `re.Pattern` rows regular expressions. One deviation: SEDD's WikiText rules
start with a regular expression written with literal slashes ("/' [0-9]/"), which matches only that
literal text; it is left out.
"""

import re

_SPACES_INSIDE = r"\s*([^{close}]*?)\s*"  # the text between a pair, without its inner edge spaces


def _pair(open_, close):
  """'( a b )' -> '(a b)' for one kind of bracket or quote (non-greedy, as SEDD's rules)."""
  return (re.compile(re.escape(open_) + _SPACES_INSIDE.format(close=re.escape(close)) + re.escape(close)),
          open_ + r"\1" + close)


_WIKITEXT = [
    ("s '", "s'"),  # plural possessive
    (" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."),  # separators inside numbers and compounds
    (" : ", ": "), (" ; ", "; "), (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", "),
    _pair("(", ")"), _pair("[", "]"), _pair("{", "}"), _pair('"', '"'), _pair("'", "'"),
    ("= = = =", "===="), ("= = =", "==="), ("= =", "=="),  # section headings
    (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"), (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s"),
]

_PTB_BEFORE_NUMBERS = [(" 's", "'s"), ("s ' ", "s' "), (" n't", "n't"), (" \n ", "\n"), ("\\/", "/")]
_PTB_NUMBER_PASSES = 10  # " N N " needs two passes of " N " -> " 1 " (matches share a space); SEDD makes 10
_PTB_AFTER_NUMBERS = [("$ 1", "$1"), ("# 1", "#1"), ("<unk>", "?")]

_LM1B = [
    ("http : / / ", "http://"), ("https : / / ", "https://"),
    (re.compile(r" '(\w+)"), r"'\1"),  # "it 's" -> "it's"
    (re.compile(r" (\w+) \. "), r" \1. "), (re.compile(r" (\w+) \.$"), r" \1."),
    (" ? ", "? "), (re.compile(r" \?$"), "?"), (" ! ", "! "), (re.compile(r" \!$"), "!"),
    (" , ", ", "), (" : ", ": "), (" ; ", "; "), (" / ", "/"),
    (re.compile(r'" ([^"]+) "'), r'"\1"'), (re.compile(r"' ([^']+) '"), r"'\1'"),
    (re.compile(r"\( ([^()]+) \)"), r"(\1)"), (re.compile(r"\[ ([^\[\]]+) \]"), r"[\1]"),
    ("$ ", "$"), ("\N{POUND SIGN} ", "\N{POUND SIGN}"),
]


def _apply(rules, text: str) -> str:
  for pattern, replacement in rules:
    if isinstance(pattern, re.Pattern):
      text = pattern.sub(replacement, text)
    else:
      text = text.replace(pattern, replacement)
  return text


def wikitext(text: str) -> str:
  """One WikiText line (raw release) -> prose."""
  return _apply(_WIKITEXT, text)


def ptb(text: str) -> str:
  """One PTB sentence -> prose ("N" stands for a number; "<unk>" becomes "?")."""
  text = _apply(_PTB_BEFORE_NUMBERS, text)
  for _ in range(_PTB_NUMBER_PASSES):
    text = text.replace(" N ", " 1 ")
  return _apply(_PTB_AFTER_NUMBERS, text)


def lm1b(text: str) -> str:
  """One LM1B sentence -> prose."""
  return _apply(_LM1B, text)


def lambada(text: str) -> str:
  """LAMBADA (OpenAI's release) is prose already: curly double quotes become straight ones, and the
  passage starts on a new line (as in GPT-2's and SEDD's evaluation)."""
  return "\n" + text.replace("\N{LEFT DOUBLE QUOTATION MARK}", '"').replace(
      "\N{RIGHT DOUBLE QUOTATION MARK}", '"').strip()
