"""Recipe (documented, not run here): SmolLM2-135M adapted into block diffusion (default) or, with `:md4`, MD4,
on FineWeb-Edu with the checkpoint's own tokenizer. Written for a TPU / GPU pod; nothing in it was measured.

  huggingface-cli download HuggingFaceTB/SmolLM2-135M --local-dir ~/ckpt/smollm2-135m   # once, online
  pip install -e ".[hf]"
  python launch.py --config configs/adapt_smollm2.py --workdir runs/smollm2_bd3 --mode prepare
  python launch.py --config configs/adapt_smollm2.py --workdir runs/smollm2_bd3

The checkpoint's config.json fixes the network (30 blocks of width 576, 9 query and 3 key/value heads, tied
embeddings: 134,515,008 parameters, plus the mask token's row here); the run is time-independent, as the AR
model is. What the adaptation papers do, as far as they report it:
- DiffuLLaMA / DiffuGPT (Gong et al., 2024): GPT-2 (127M-355M) and LLaMA-2 7B adapted with well under 200B
  tokens, using both devices here: shifted prediction and attention annealing from causal to bidirectional.
- Dream 7B (2025): Qwen2.5-7B adapted with shifted prediction, MD4-style masking, bidirectional attention.
- Fast-dLLM v2, SDAR (2025): Qwen models adapted into block diffusion, keeping the causal order between blocks,
  with about 1B tokens reported for Fast-dLLM v2's smaller models.
Our choices where they are silent or differ in scale: sequence 1,024, batch 256 (262,144 tokens a step),
50,000 steps (13B tokens), peak learning rate 1e-4 after 1,000 warm-up steps, EMA 0.9999, bfloat16 compute;
BD3 with blocks of 16; MD4 anneals over the first 5,000 steps.
"""

from configs import base

VARIANTS = ("bd3", "md4")


def get_config(variant: str = "bd3"):
  if variant not in VARIANTS:
    raise ValueError(f"configs/adapt_smollm2.py:{variant}: choose one of {VARIANTS}")
  config = base.get_config()
  config.objective = variant
  config.model.init_from = "~/ckpt/smollm2-135m"  # config.json + model.safetensors + tokenizer.json
  config.data.source = "fineweb_edu"
  config.data.tokenizer = "hf"  # data.tokenizer_path defaults to the init_from directory
  config.data.seq_len = 1024
  config.model.dtype = "bfloat16"
  config.model.transformer.scan_layers = True
  config.diffusion.shift = True
  if variant == "bd3":
    config.diffusion.bd3.block_size = 16
    config.sampler.kv_cache = "exact"
    config.sampler.steps = 1024
  else:
    config.diffusion.anneal_steps = 5000
  config.train.batch_size = 256
  config.train.num_steps = 50_000
  config.train.learning_rate = 1e-4
  config.train.warmup_steps = 1000
  config.train.ema_decay = 0.9999
  config.train.log_every = 100
  config.train.eval_every = 2500
  config.train.checkpoint_every = 2500
  return config
