"""Block diffusion (BD3-LM, Arriola et al. 2025) "small" on OpenWebText with GPT-2 BPE, blocks of 4 tokens: the
paper's OWT setting on configs/owt_small.py's transformer.

Prepare once: python launch.py --config configs/bd3_owt_small.py --mode prepare

As the paper: sequence 1,024, blocks of L' = 4, a time-independent network (blocks differ in t), 12 blocks of
width 768 and 12 heads, batch 512, learning rate 3e-4, linear schedule, continuous-time bound. Differences:
- the paper trains with clipped mask rates (block times drawn in [beta, omega], tuned per block size, to cut the
  gradient's variance); here diffusion.bd3.clip_low / clip_high stay at 0 and 1 (the plain bound) because I could
  not check the paper's tuned values for L' = 4: set them on the command line to use its range;
- the transformer is owt_small's (docs in that file: SwiGLU, RMSNorm, no dropout, decay on matrices only),
  without its time modulations;
- the paper fine-tunes from an MDLM checkpoint (block size L') for part of its budget; this trains from scratch;
- held-out data: a document-hash 0.5% split (docs/design.md).
"""

from configs import owt_small


def get_config():
  config = owt_small.get_config()
  config.objective = "bd3"
  config.diffusion.bd3.block_size = 4
  config.model.time_conditioning = False  # what bd3 runs anyway: no adaLN modulations, so none are counted
  config.model.transformer.cond_dim = 0
  config.sampler.steps = 1024  # shared by the 256 blocks: 4 steps per block of 4 tokens
  return config
