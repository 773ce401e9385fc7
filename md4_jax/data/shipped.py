"""The data files that ship inside the package (md4_jax/data/assets/, each with its licence there): GPT-2's BPE
ranks, the digits and the embedded Wikipedia excerpt. They make the default runs and GPT-2 runs work with the
plain install and no download; each is checked against its SHA-256 when read, so a damaged install is named."""

import functools
import hashlib
import pathlib

from md4_jax.errors import UserError

ASSETS = pathlib.Path(__file__).resolve().parent / "assets"

# name -> SHA-256 (md4_jax/data/assets/README.md lists their sources and licences).
SHA256 = {
    "gpt2.tiktoken": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    "digits.csv.gz": "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
    "enwiki_excerpt.xml.bz2": "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
}


def path(name: str) -> pathlib.Path:
  """Where the shipped file `name` is (whether or not it is there)."""
  return ASSETS / name


@functools.lru_cache(maxsize=None)
def read_bytes(name: str) -> bytes:
  """The shipped file's bytes, refused unless they have the SHA-256 it was shipped with."""
  file = path(name)
  try:
    data = file.read_bytes()
  except OSError as error:
    raise UserError(f"the file {file}, which ships with md4-jax, cannot be read ({error}); the install is "
                    "incomplete: reinstall with `pip install -e .` from the repository") from None
  if hashlib.sha256(data).hexdigest() != SHA256[name]:
    raise UserError(f"the file {file}, which ships with md4-jax, is damaged (its SHA-256 differs from the shipped "
                    f"{SHA256[name][:16]}...); restore it (`git checkout md4_jax/data/assets` in the repository) or "
                    "reinstall md4-jax")
  return data
