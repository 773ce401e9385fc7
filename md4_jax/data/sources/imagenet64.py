"""`imagenet64`: downsampled ImageNet 64x64, prepared once by `--mode prepare` (data/image_datasets.py): van den
Oord et al.'s release (the likelihood tables' data, no labels) or, with its own key subset="labeled", Chrabaszcz et
al.'s npz release (1,000 classes; docs/images.md)."""

import ml_collections

from md4_jax.data.sources.releases import MODALITY, load, modality, prepare  # noqa: F401 (this source's interface)

KIND = "source"


def config_group() -> ml_collections.ConfigDict:
  """data.imagenet64.*: gathered by configs/base.py."""
  group = ml_collections.ConfigDict()
  group.subset = ""  # "" = van den Oord et al.'s release (no labels) | "labeled" (Chrabaszcz et al., 1000 classes)
  return group
