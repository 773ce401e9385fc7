"""What `--mode sample` conditions on -> the sampler's start state: a prompt or an infill template (text),
a region of held-out images to complete, class labels (class-conditional image runs).

The start state is one row of token ids of length data.seq_len with the mask id
(= vocab_size) where the sampler generates; every other id stays as given.
Infill syntax: each underscore `_` in the template is one token to generate
(`"the ____ sat on the ___"`); text between gaps is tokenized piece by piece.
Positions after the prompt or template are generated too.
"""

import re

import numpy as np

from md4_jax.errors import UserError


def start_state(tokenizer, length: int, *, prompt: str | None = None, infill: str | None = None) -> np.ndarray:
  """[length] int32: known ids, and the mask id (tokenizer.vocab_size) wherever the sampler generates."""
  mask_id = tokenizer.vocab_size
  if prompt and infill:
    raise UserError("--prompt and --infill both given; use one (an infill template may start with the prompt)")
  if infill is not None and "_" not in infill:
    raise UserError(f"--infill={infill!r} has no gaps: write each token to generate as '_' (e.g. 'the ___ sat')")
  pieces = []
  if prompt:
    pieces.append(np.asarray(tokenizer.encode(prompt), np.int32))
  for piece in re.split(r"(_+)", infill or ""):
    if piece.startswith("_"):
      pieces.append(np.full(len(piece), mask_id, np.int32))
    elif piece:
      pieces.append(np.asarray(tokenizer.encode(piece), np.int32))
  known = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
  flag = "--prompt" if prompt else "--infill"
  if len(known) > length or (prompt and len(known) == length):
    raise UserError(f"{flag} is {len(known)} tokens but data.seq_len is {length}, leaving nothing to generate; "
                    "shorten it")
  return np.concatenate([known, np.full(length - len(known), mask_id, np.int32)])


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


def completion_start(tokens_NxD: np.ndarray, image, region: str) -> np.ndarray:
  """[N, D]: the images' tokens where `region` is kept, the mask id (image.levels) elsewhere."""
  return np.where(kept_region(image, region)[None], tokens_NxD, image.levels).astype(np.int32)


def parse_class_labels(spec: str, num_classes: int) -> list[int]:
  """--class_label "3" or "1,4,7" -> [labels], each in [0, num_classes)."""
  if not num_classes:
    raise UserError("--class_label needs a class-conditional run (model.class_conditional=True on labelled images)")
  items = [item.strip() for item in spec.split(",") if item.strip()]
  if not items or not all(item.isdigit() and int(item) < num_classes for item in items):
    raise UserError(f"--class_label={spec!r}: give class numbers in 0..{num_classes - 1}, e.g. 3 or 1,4,7")
  return [int(item) for item in items]
