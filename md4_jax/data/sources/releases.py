"""What the released image datasets share (cifar10, imagenet64): prepared once by `--mode prepare` from their
release files (data/image_datasets.py) into array_record files read through tfds, images as rows of H * W * C
sub-pixel tokens, labels kept where the release has them; shape and classes from the release table."""

from md4_jax.data import data_dir, image_datasets, prepare_into, read_prepared, source_subset
from md4_jax.data import modality as modalities
from md4_jax.data.rows import Data, RecordRows

MODALITY = "image"


def load(data_config, split: str, saved) -> Data:
  del split, saved
  root, subset = data_dir(data_config), source_subset(data_config)
  read_prepared(data_config, image_datasets.prepared_dir(data_config.source, root, subset))
  splits, meta = image_datasets.load(data_config.source, root, subset=subset)
  labelled = meta["num_classes"] > 0
  images = modalities.Image(meta["height"], meta["width"], meta["channels"], meta["levels"], meta["num_classes"])
  return Data(images, RecordRows(splits["train"], labelled), RecordRows(splits["validation"], labelled))


def prepare(data_config) -> str:
  root, subset = data_dir(data_config), source_subset(data_config)
  return prepare_into(data_config, image_datasets.prepared_dir(data_config.source, root, subset),
                      lambda: image_datasets.prepare(data_config.source, root, manual_dir=data_config.manual_dir,
                                                     subset=subset, max_images=data_config.max_documents))


def modality(data_config) -> modalities.Image:
  """The release's shape and classes from its entry in image_datasets.RELEASES, without reading data (8-bit)."""
  release = image_datasets.release_of(data_config.source, source_subset(data_config))
  return modalities.Image(*release.shape, levels=256, num_classes=release.num_classes)
