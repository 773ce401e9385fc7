"""MD4 on ImageNet 64x64 pixels: the published setting (Shi et al. 2024: 3.40 bits/dim, 198M parameters).

Prepare once: python launch.py --config configs/imagenet64.py --mode prepare --config.data.manual_dir=DIR
with DIR holding train_64x64.tar and valid_64x64.tar (van den Oord et al.'s release, the likelihood
tables' data; no labels). For class-conditional runs use Chrabaszcz et al.'s labelled npz release:
--config.data.imagenet64.subset=labeled --config.model.class_conditional=True (see docs/images.md).

Settings, from the reference code's configs/md4/imagenet64.py and networks/uvit.py, dit.py (the paper's
appendix could not be read offline; arXiv v1 reported 3.42 bits/dim, the later version 3.40):
- U-ViT: 8 residual blocks down and 9 up at 64x64 with 256 channels and conditional GroupNorm, around a
  DiT middle: patch size 2 (1,024 tokens), width 768, 12 heads, MLP ratio 4, 20 layers, dropout 0.1.
  The reference's sweep notes that 24 residual blocks and 12 DiT layers gave its best likelihood.
- Training as configs/cifar10.py (imported: AdamW 2e-4, 100 warm-up steps, weight decay 0.01, b2 0.99,
  EMA 0.9999, linear schedule, continuous time, 256 sampling steps on the cosine grid, no gradient
  clipping), with batch 512. Differences from the reference code: as there.
"""

from configs import cifar10


def get_config():
  config = cifar10.get_config()  # the same published training settings
  config.data.source = "imagenet64"
  config.model.backbone = "uvit"
  config.model.uvit.channels = 256
  config.model.uvit.num_res_blocks = 8
  config.model.uvit.patch_size = 2
  config.model.uvit.width = 768
  config.model.uvit.num_layers = 20
  config.model.uvit.num_heads = 12
  config.model.uvit.mlp_ratio = 4.0
  config.model.uvit.dropout = 0.1
  config.train.batch_size = 512
  config.eval.max_sequences = 10_000  # periodic evals on 10,000 of the 49,999 held-out images; --mode eval: all
  config.sampler.num_samples = 16
  return config
