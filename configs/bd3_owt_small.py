"""Block diffusion (BD3-LM, Arriola et al. 2025) "small" on OpenWebText with GPT-2 BPE, blocks of 4 tokens: the
paper's OWT setting on configs/owt_small.py's transformer.

Prepare once: python launch.py --config configs/bd3_owt_small.py --mode prepare

As the paper: sequence 1,024, blocks of L' = 4, a time-independent network (blocks differ in t), 12 blocks of
width 768 and 12 heads, batch 512, learning rate 3e-4, linear schedule, continuous-time bound. Differences:
- the paper's clipped mask rates during training (drawn in [beta, omega] to cut the gradient's variance) are not
  built yet: every block's t is drawn from [0, 1), the plain bound (the paper reports both);
- the transformer is owt_small's (docs in that file: SwiGLU, RMSNorm, no dropout, decay on matrices only),
  without its time modulations;
- the paper fine-tunes from an MDLM checkpoint (block size L') for part of its budget; this trains from scratch;
- held-out data: a document-hash 0.5% split (docs/design.md).
"""

from configs import owt_small


def get_config():
  config = owt_small.get_config()
  config.objective = "bd3"
  config.diffusion.block_size = 4
  config.model.time_conditioning = False  # what bd3 runs anyway: no adaLN modulations, so none are counted
  config.model.cond_dim = 0
  config.sampler.steps = 1024  # shared by the 256 blocks: 4 steps per block of 4 tokens
  return config
