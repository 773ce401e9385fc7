"""`fineweb_edu`: HuggingFaceFW/fineweb-edu from the hub (parquet shards of a subset), tokens packed into rows by
`--mode prepare`; its own key picks the subset (data/hub_datasets.py)."""

import ml_collections

from md4_jax.data.sources.hub import MODALITY, load, modality, prepare  # noqa: F401 (this source's interface)

KIND = "source"


def config_group() -> ml_collections.ConfigDict:
  """data.fineweb_edu.*: gathered by configs/base.py."""
  group = ml_collections.ConfigDict()
  group.subset = ""  # the hub subset: "" = sample-10BT, or sample-100BT, sample-350BT
  return group
