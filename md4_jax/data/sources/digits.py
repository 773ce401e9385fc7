"""`digits`: the 1,797 8x8 handwritten digits (UCI's test set, 17 grey levels 0-16, labels 0-9; CC BY 4.0) in
scikit-learn's file, shipped with the package (md4_jax/data/assets/digits.csv.gz); nothing to download. Held out:
every tenth image (index 0, 10, 20, ...: 180 images), the other 1,617 train."""

import gzip
import io

import numpy as np

from md4_jax.data import modality as modalities
from md4_jax.data import shipped
from md4_jax.data.rows import ArrayRows, Data

KIND = "source"
MODALITY = "image"
DIGITS = modalities.Image(height=8, width=8, channels=1, levels=17, num_classes=10)
HELD_OUT_EVERY = 10  # image i is held out when i % 10 == 0


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """(images [1797, 64] int32 in 0..16, labels [1797]) in the file's (scikit-learn's) order: each row is an
  image's 64 pixels, row by row, then its digit."""
  rows = np.loadtxt(io.BytesIO(gzip.decompress(shipped.read_bytes("digits.csv.gz"))), delimiter=",", dtype=np.int32)
  return rows[:, :-1], rows[:, -1]


def load(data_config, split: str, saved) -> Data:
  del data_config, split, saved
  images, labels = digits_arrays()
  held_out = np.arange(len(images)) % HELD_OUT_EVERY == 0
  return Data(DIGITS, ArrayRows(images[~held_out], labels[~held_out]), ArrayRows(images[held_out], labels[held_out]))


def modality(data_config) -> modalities.Image:
  del data_config
  return DIGITS
