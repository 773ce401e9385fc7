"""What `--mode sample` conditions on -> the sampler's start state: a prompt or an infill template (text),
a region of held-out images to complete, class labels (class-conditional image runs).

The start state is one row of token ids of length data.seq_len with the mask id
(= vocab_size) where the sampler generates; every other id stays as given.
Infill syntax: each underscore `_` in the template is one token to generate
(`"the ____ sat on the ___"`); text between gaps is tokenized piece by piece.
`--gap_char` picks another gap character, for alphabets that hold `_` or templates that need one.
Positions after the prompt or template are generated too.
"""

import re

import numpy as np

from md4_jax.errors import UserError

GAP_CHAR = "_"  # the default gap character of an --infill template
_GAP_CHOICES = "#*@~^|%+="  # suggested in its place when the alphabet holds it


def known_tokens(tokenizer, length: int, *, prompt: str | None = None, infill: str | None = None,
                 gap_char: str | None = None) -> np.ndarray:
  """[K <= length] int32: the tokens every sample starts with (the prompt, or the infill template with the mask id
  (tokenizer.vocab_size) at its gaps); the sampler generates them and everything after them.

  gap_char: the character that marks a token to generate in `infill` (None: GAP_CHAR).
  """
  mask_id = tokenizer.vocab_size
  if prompt is not None and infill is not None:
    raise UserError("--prompt and --infill both given; use one (an infill template may start with the prompt)")
  if prompt == "":
    raise UserError("--prompt is empty, so it conditions nothing: give the text every sample starts with, or leave "
                    "--prompt out to sample unconditionally")
  gap = _gap_char(tokenizer, infill, gap_char)
  if infill is not None and gap not in infill:
    raise UserError(f"--infill={infill!r} has no gaps: write each token to generate as {gap!r} "
                    f"(e.g. 'the {gap * 3} sat')")
  _check_characters(tokenizer, "--prompt", prompt or "")
  _check_characters(tokenizer, "--infill", (infill or "").replace(gap, ""))
  pieces = []
  if prompt:
    pieces.append(np.asarray(tokenizer.encode(prompt), np.int32))
  for piece in re.split(f"({re.escape(gap)}+)", infill or ""):
    if piece.startswith(gap):
      pieces.append(np.full(len(piece), mask_id, np.int32))
    elif piece:
      pieces.append(np.asarray(tokenizer.encode(piece), np.int32))
  known = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
  flag = "--prompt" if prompt else "--infill"
  if len(known) > length or (prompt and len(known) == length):
    raise UserError(f"{flag} is {len(known)} tokens but a sample is {length} (data.seq_len, or --length), "
                    "leaving nothing to generate; shorten it")
  return known


def _gap_char(tokenizer, infill: str | None, gap_char: str | None) -> str:
  """The infill gap character, refused where it is ambiguous: a char tokenizer whose alphabet holds it."""
  if gap_char is not None and infill is None:
    raise UserError(f"--gap_char={gap_char!r} marks the gaps of an --infill template; give --infill too, or drop "
                    "--gap_char")
  if gap_char is not None and len(gap_char) != 1:
    raise UserError(f"--gap_char={gap_char!r} must be one character, e.g. --gap_char='#'")
  gap = GAP_CHAR if gap_char is None else gap_char
  alphabet = getattr(tokenizer, "alphabet", "")  # byte and GPT-2 tokenizers encode any text: the gap always wins
  if infill is not None and gap in alphabet:
    raise UserError(f"the run's alphabet contains the gap character {gap!r}, so the --infill template cannot tell "
                    f"gaps from literal {gap!r}s: pass --gap_char='{_free_character(alphabet)}' (not in the "
                    "alphabet) and write each gap with it")
  return gap


def _free_character(alphabet: str) -> str:
  """A printable character outside `alphabet`, to suggest as --gap_char (no quote or backslash: it goes in '...')."""
  candidates = _GAP_CHOICES + "".join(chr(code) for code in range(33, 0x3000) if chr(code).isprintable())
  return next(c for c in candidates if c not in alphabet and c not in "'\\")


def _check_characters(tokenizer, flag: str, text: str) -> None:
  """A char tokenizer knows only the run's characters: name the others, the flag and the alphabet."""
  alphabet = getattr(tokenizer, "alphabet", None)
  unknown = sorted(set(text) - set(alphabet)) if alphabet else []
  if unknown:
    raise UserError(f"{flag} has characters {unknown} that are not in the tokenizer's alphabet {alphabet!r} (the "
                    "run's characters); use only those")


COMPLETION_REGIONS = ("top", "left", "center")


def kept_region(image, region: str) -> np.ndarray:
  """[D] bool: the sub-pixels `--complete region` keeps (top half, left half, or the centre half-size
  square); the sampler generates the rest."""
  if region not in COMPLETION_REGIONS:
    raise UserError(f"--complete={region!r}; choose one of {COMPLETION_REGIONS}")
  rows, columns = np.meshgrid(np.arange(image.height), np.arange(image.width), indexing="ij")
  keep = {"top": rows < image.height // 2, "left": columns < image.width // 2,
          "center": (abs(2 * rows + 1 - image.height) <= image.height // 2)
          & (abs(2 * columns + 1 - image.width) <= image.width // 2)}[region]
  return np.repeat(keep.reshape(-1), image.channels)  # every channel of a kept pixel


def completion_start(tokens_NxL: np.ndarray, image, region: str) -> np.ndarray:
  """[N, L]: the images' tokens where `region` is kept, the mask id (image.levels) elsewhere."""
  return np.where(kept_region(image, region)[None], tokens_NxL, image.levels).astype(np.int32)


def parse_class_labels(spec: str, num_classes: int) -> list[int]:
  """--class_label "3" or "1,4,7" -> [labels], each in [0, num_classes).

  num_classes: the classes the run's network was trained on; 0 for an unconditional run, whose network reads no
  label (whatever classes its data has), so a label would be ignored."""
  if not num_classes:
    raise UserError(f"--class_label={spec!r}: this run is unconditional (its network reads no class label); "
                    "sample without --class_label, or train with --config.model.class_conditional=True on "
                    "labelled images")
  items = [item.strip() for item in spec.split(",") if item.strip()]
  if not items or not all(item.isdigit() and int(item) < num_classes for item in items):
    raise UserError(f"--class_label={spec!r}: give class numbers in 0..{num_classes - 1}, e.g. 3 or 1,4,7")
  return [int(item) for item in items]
