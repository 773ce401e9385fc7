"""MD4 small on FineWeb-Edu (the hub's sample-10BT subset), GPT-2 BPE; otherwise as owt_small."""

from configs import owt_small


def get_config():
  config = owt_small.get_config()
  config.data.source = "fineweb_edu"
  config.data.fineweb_edu.subset = "sample-10BT"
  return config
