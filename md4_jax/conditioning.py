"""What `--mode sample` conditions on: a prompt or an infill template -> the sampler's start state.

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
