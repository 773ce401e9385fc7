"""`cifar10`: CIFAR-10's python release (Krizhevsky 2009; 50,000 / 10,000 32x32 colour images, 10 classes),
prepared once by `--mode prepare` (data/image_datasets.py)."""

from md4_jax.data.sources.releases import MODALITY, load, modality, prepare  # noqa: F401 (this source's interface)

KIND = "source"
