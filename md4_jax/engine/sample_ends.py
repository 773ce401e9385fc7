"""Where a text sample ends: at its first end-of-text token (tokenizers that have one), at the first of the
`--stop` strings, or at its length; what it records (`stop`, `chars`). Fed a row's pieces in order (a long BD3
sample arrives segment by segment), so it holds back the few characters a stop string could still begin with. The
first `keep` tokens (a --prompt) are written as they are: a sample ends only in what was generated."""

import codecs

import numpy as np

END_OF_TEXT, STOP_STRING, LENGTH = "end_of_text", "stop_string", "length"


class Ending:
  """One row's text as it arrives: `feed(tokens)` returns the text to write now, `finish()` the rest."""

  def __init__(self, decode_bytes, end_id: int | None = None, stops=(), keep: int = 0):
    self.decode_bytes, self.end_id, self.keep = decode_bytes, end_id, keep
    self.stops = tuple(stop for stop in stops if stop)
    self.hold = max(map(len, self.stops), default=1) - 1  # a stop string's length - 1: it may straddle two pieces
    self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
    self.pending, self.reason, self.stop, self.chars = "", None, None, 0

  def feed(self, tokens_S) -> str:
    if self.reason is not None:
      return ""
    tokens_S = np.asarray(tokens_S)
    kept, self.keep = tokens_S[:self.keep], max(0, self.keep - len(tokens_S))
    written = self.decoder.decode(self.decode_bytes(kept)) if len(kept) else ""
    self.chars += len(written)
    tokens_S = tokens_S[len(kept):]
    ends = np.flatnonzero(tokens_S == self.end_id) if self.end_id is not None else ()
    if len(ends):
      tokens_S, self.reason = tokens_S[:ends[0]], END_OF_TEXT
    return written + self._text(self.decoder.decode(self.decode_bytes(tokens_S), final=self.reason is not None))

  def finish(self) -> str:
    if self.reason is not None and not self.pending:
      return ""
    text = self._text(self.decoder.decode(b"", final=True), final=True)
    self.reason = self.reason or LENGTH
    return text

  def record(self) -> dict:
    """The jsonl fields: why the sample stopped and its length in characters."""
    return {"stop": self.reason or LENGTH, **({"stop_string": self.stop} if self.stop else {}), "chars": self.chars}

  def _text(self, new: str, final: bool = False) -> str:
    text = self.pending + new
    found = [(text.index(stop), stop) for stop in self.stops if stop in text]
    if found:
      cut, self.stop = min(found)
      out, self.pending, self.reason = text[:cut], "", STOP_STRING
    elif final or self.reason is not None or not self.hold:
      out, self.pending = text, ""
    else:
      out, self.pending = text[:max(0, len(text) - self.hold)], text[max(0, len(text) - self.hold):]
    self.chars += len(out)
    return out


def cut(tokens_L, decode_bytes, end_id: int | None = None, stops=(), keep: int = 0) -> tuple[str, dict]:
  """A whole row's text and record (the harness's generate_until, the terminal's texts)."""
  ending = Ending(decode_bytes, end_id, stops, keep)
  text = ending.feed(tokens_L) + ending.finish()
  return text, ending.record()
