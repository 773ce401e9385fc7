"""`openwebtext`: Skylion007/openwebtext from the hub (parquet), tokens packed into rows by `--mode prepare`; held
out: the documents whose text hashes into 0.5% (data/hub_datasets.py)."""

from md4_jax.data.sources.hub import MODALITY, load, modality, prepare  # noqa: F401 (this source's interface)

KIND = "source"
