"""`lm1b`: the One Billion Word benchmark (its release tarball), sentences tokenized and packed by `--mode prepare`;
held out: its own held-out split (data/lm1b_text.py, data/hub_datasets.py)."""

from md4_jax.data.sources.hub import MODALITY, load, modality, prepare  # noqa: F401 (this source's interface)

KIND = "source"
