"""MD4 small on One Billion Word (LM1B), GPT-2 BPE, sentences detokenized and packed into rows of 128.

Prepare once (downloads the 1.7 GB release, or pass --config.data.manual_dir=DIR with it extracted):
python launch.py --config configs/lm1b.py --mode prepare
"""

from configs import owt_small


def get_config():
  config = owt_small.get_config()
  config.data.source = "lm1b"
  config.data.seq_len = 128
  config.eval.max_sequences = 0  # the held-out file is small (~6k rows of 128): evaluate all of it
  return config
