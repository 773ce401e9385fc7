"""The image sources' loaders and preparers: images as rows of H * W * C sub-pixel tokens.

digits: the 1,797 8x8 handwritten digits (UCI's test set, 17 grey levels 0-16, labels 0-9) in scikit-learn's
file, shipped with the package (md4_jax/data/assets/digits.csv.gz); nothing to download. Held out: every tenth image (index 0, 10, 20, ...: 180
images), the other 1,617 train. cifar10 and imagenet64 are prepared once from their releases
(image_datasets.py) into array_record files read through tfds.
"""

import gzip
import io

import numpy as np

from md4_jax.data import data_dir, image_datasets, prepare_into, read_prepared, shipped
from md4_jax.data import modality as modalities
from md4_jax.data.rows import ArrayRows, Data, RecordRows

DIGITS = modalities.Image(height=8, width=8, channels=1, levels=17, num_classes=10)
DIGITS_HELD_OUT_EVERY = 10  # image i is held out when i % 10 == 0


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """(images [1797, 64] int32 in 0..16, labels [1797]) in the file's (scikit-learn's) order: each row is an
  image's 64 pixels, row by row, then its digit."""
  rows = np.loadtxt(io.BytesIO(gzip.decompress(shipped.read_bytes("digits.csv.gz"))), delimiter=",", dtype=np.int32)
  return rows[:, :-1], rows[:, -1]


def load_digits(data_config, split: str, saved) -> Data:
  del data_config, split, saved
  images, labels = digits_arrays()
  held_out = np.arange(len(images)) % DIGITS_HELD_OUT_EVERY == 0
  return Data(DIGITS, ArrayRows(images[~held_out], labels[~held_out]), ArrayRows(images[held_out], labels[held_out]))


def _modality(meta: dict) -> modalities.Image:
  return modalities.Image(meta["height"], meta["width"], meta["channels"], meta["levels"], meta["num_classes"])


def load_release(data_config, split: str, saved) -> Data:
  """cifar10, imagenet64: the prepared release (labels kept where it has them)."""
  del split, saved
  root = data_dir(data_config)
  read_prepared(data_config, image_datasets.prepared_dir(data_config.source, root, data_config.subset))
  splits, meta = image_datasets.load(data_config.source, root, subset=data_config.subset)
  labelled = meta["num_classes"] > 0
  return Data(_modality(meta), RecordRows(splits["train"], labelled), RecordRows(splits["validation"], labelled))


def prepare_release(data_config) -> str:
  root = data_dir(data_config)
  return prepare_into(data_config, image_datasets.prepared_dir(data_config.source, root, data_config.subset),
                      lambda: image_datasets.prepare(data_config.source, root, manual_dir=data_config.manual_dir,
                                                     subset=data_config.subset, max_images=data_config.max_documents))


def digits_modality(data_config) -> modalities.Image:
  del data_config
  return DIGITS


def release_modality(data_config) -> modalities.Image:
  """A release's shape and classes from its entry in image_datasets.RELEASES, without reading data (8-bit images)."""
  release = image_datasets.release_of(data_config.source, data_config.subset)
  return modalities.Image(*release.shape, levels=256, num_classes=release.num_classes)
