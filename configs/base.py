"""Every config key, with its default. Experiment configs import this and override a few keys.

Keys not defined here are an error, and so are values of the wrong type. A part's own keys (a backbone's, an
objective's, a sampler's, a data source's) are declared next to its code, in its module's config_group(), and
gathered here as model.<backbone>.*, diffusion.<objective>.*, sampler.<sampler>.*, data.<source>.*; those of
parts outside md4_jax come from the modules listed in `plugins` (md4_jax/parts.py, docs/design.md).
"""

import ml_collections

from md4_jax import parts
from md4_jax.data.sources import fineweb_edu, imagenet64, tokens
from md4_jax.models import transformer, unet, uvit
from md4_jax.objectives import bd3, genmd4
from md4_jax.samplers import confidence, exact, parallel, remdm, semi_ar


def get_config(plugins: str = "") -> ml_collections.ConfigDict:
  """plugins: modules outside md4_jax whose parts this config may choose ("mypkg.net,mypkg.sampler")."""
  config = ml_collections.ConfigDict()
  # Modules outside md4_jax that hold parts (each sets KIND: "backbone" | "objective" | "sampler" | "source"); their
  # config groups are added beside the built-in ones. Choose a part by its module path (model.backbone="mypkg.net").
  config.plugins = ""  # comma-separated module paths; "" = none
  config.seed = 0  # base PRNG seed: init, data order, time/mask draws, eval and sample keys
  # "md4": masked diffusion, the negative ELBO | "genmd4": MD4 with a learned per-token schedule | "bd3": block
  # diffusion (blocks of diffusion.bd3.block_size left to right; needs model.backbone="transformer") | "ar": causal
  # next-token baseline, exact likelihood (needs model.backbone="transformer"). Replaces model.kind.
  config.objective = "md4"  # what a step optimises (see the lines above)

  config.data = ml_collections.ConfigDict()
  # Text: "embedded" (a Wikipedia excerpt shipped with md4-jax) | "textfile" | "tokens" (your token ids) | "text8" |
  # "openwebtext" | "fineweb_edu" | "lm1b". Images: "digits" (shipped with md4-jax) | "cifar10" | "imagenet64".
  # text8, the hub sets, cifar10 and imagenet64 are downloaded once by `--mode prepare`.
  config.data.source = "embedded"  # which data (see the lines above)
  config.data.path = ""  # the file for source="textfile" (UTF-8 text) or "tokens" (.npy, or raw .bin)
  config.data.tokenizer = "char"  # "char" | "byte" | "gpt2" (GPT-2 BPE via tiktoken, from a local file) | "hf" (a tokenizer.json)
  config.data.tokenizer_path = ""  # gpt2: a gpt2.tiktoken file ("" = the shipped copy); hf: a tokenizer.json or its directory
  config.data.seq_len = 128  # tokens per training sequence (text; an image's length is H * W * C)
  config.data.eval_fraction = 0.05  # held-out share, from the end ("embedded", "textfile", "tokens")
  config.data.dir = "~/md4_data"  # where `--mode prepare` writes datasets and training reads them
  config.data.manual_dir = ""  # already-downloaded raw files (text8.zip, hub shards); "" = download
  config.data.max_documents = 0  # prepare only the first N documents (images: per split); 0 = all; small trials
  # Each source's own keys, next to its code (md4_jax/data/sources/):
  config.data.tokens = tokens.config_group()  # source="tokens"
  config.data.fineweb_edu = fineweb_edu.config_group()  # source="fineweb_edu"
  config.data.imagenet64 = imagenet64.config_group()  # source="imagenet64"

  config.model = ml_collections.ConfigDict()
  config.model.backbone = "transformer"  # the network: "transformer" (tokens) | "unet" | "uvit" (images) | a module path
  config.model.transformer = transformer.config_group()  # backbone="transformer": models/transformer.py
  # Every backbone:
  # A Hugging Face model directory (config.json + model.safetensors or its shards; Llama, Qwen2, Qwen3) whose weights
  # start a new run: its config.json fixes model.transformer.* (and data.tokenizer_path when data.tokenizer="hf").
  # Or another md4-jax run's workdir (same data and tokenizer; its network's keys, its EMA params at init_step):
  # an AR run adapted into MD4 or BD3 (configs/adapt_quickstart.py).
  config.model.init_from = ""  # "" = random initial weights
  config.model.init_step = -1  # init_from a workdir: which checkpoint; -1 = its newest
  config.model.time_conditioning = True  # condition on t (adaLN-zero / added embedding); False = time-independent
  config.model.class_conditional = False  # image sources with labels: condition on the class (label embedding)
  config.model.label_dropout = 0.1  # class_conditional: share of training labels replaced by the null class (for guidance)
  config.model.dtype = "float32"  # compute dtype: "float32" | "bfloat16" (params, optimizer, softmax, loss stay float32)
  config.model.remat = "none"  # "none" | "block": recompute each block in the backward pass (less memory, ~1/3 more compute)
  # "auto": cuDNN's fused kernel on a GPU in bfloat16; on a TPU, Pallas splash for block diffusion's mask; else XLA
  config.model.attention = "auto"  # "auto" | "xla" | "cudnn" | "splash"

  config.model.unet = unet.config_group()  # backbone="unet": residual blocks at full resolution: models/unet.py

  config.model.uvit = uvit.config_group()  # backbone="uvit": residual blocks around a DiT middle: models/uvit.py

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.schedule = "linear"  # "linear" | "cosine" | "polyK" (e.g. "poly2") | "geometric"
  config.diffusion.timesteps = 0  # 0 = continuous-time ELBO; T > 0 = T-step discrete-time ELBO
  # The network reads the sequence one place to the right (its output i scores token i from input i - 1), as an
  # autoregressive head was trained: for runs adapted from AR weights (model.init_from; md4, genmd4, bd3).
  config.diffusion.shift = False  # True: shifted prediction (docs/method.md, "Adapting autoregressive weights")
  # MD4 from causal weights: training attention goes from causal to bidirectional over this many steps (each later
  # key visible with probability (step + 1) / N; DiffuLLaMA); evaluation and sampling are bidirectional.
  config.diffusion.anneal_steps = 0  # 0 = bidirectional from the first step
  config.diffusion.antithetic = True  # low-discrepancy t across the batch (unbiased, lower variance)
  config.diffusion.bd3 = bd3.config_group()  # objective="bd3": block diffusion's keys (objectives/bd3.py)
  config.diffusion.genmd4 = genmd4.config_group()  # objective="genmd4": a learned schedule per token (objectives/genmd4.py)

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 2000  # total optimizer steps
  config.train.batch_size = 32  # global batch (sequences), split over the data axes of the mesh
  config.train.grad_accum = 1  # microbatches per step (each with its own times and masks); divides batch_size
  # On the CPU each jitted call allocates XLA's temporaries from the kernel afresh (zeroed pages), so 10 steps per
  # call cut that cost ~10x. Calls start at multiples of it and never straddle an evaluation or checkpoint.
  config.train.steps_per_call = 1  # optimizer steps per jitted call (a scan over that many batches); same updates
  # Only masked positions need the output layer. A step gathers at most this share of positions first and
  # falls back to every position when more are masked, so the loss is always exact; 1 = every position.
  config.train.logits_capacity = -1.0  # -1 = auto: 1 below a 1024-token vocabulary, else mean masked share + 0.1
  config.train.learning_rate = 1e-3  # peak AdamW learning rate
  config.train.warmup_steps = 100  # linear warm-up, then cosine decay to 10% at num_steps
  config.train.weight_decay = 0.03  # AdamW decoupled weight decay, matrices only
  config.train.b1 = 0.9  # Adam beta1
  config.train.b2 = 0.99  # Adam beta2
  config.train.grad_clip = 1.0  # global gradient-norm clip; 0 = none
  config.train.ema_decay = 0.999  # EMA of params (warmed up as (1 + n) / (10 + n)); eval and samples use it
  config.train.log_every = 50  # steps between train metric lines (means over the window)
  config.train.eval_every = 500  # steps between held-out evaluations and sample dumps (and at the end)
  config.train.checkpoint_every = 500  # steps between checkpoints (and at the end, and on SIGTERM)
  config.train.keep_checkpoints = 3  # most recent checkpoints kept on disk
  # A jax.profiler trace of steps A+1..B in WORKDIR/profile/ (tensorboard --logdir WORKDIR/profile, or XProf) and a
  # table of the top kernels per step beside it (profile/kernels_steps_A_B.md); rounded out to whole calls.
  config.train.profile_steps = ""  # "A:B" traces those steps (e.g. "10:15"); "" = no trace

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 64  # sequences per eval batch (the last one is padded and masked)
  config.eval.max_sequences = 0  # 0 = the whole held-out split; N = its first N sequences
  config.eval.time_samples = 1  # K draws of t per sequence (stratified); the bound's std error shrinks with K
  config.eval.timesteps = -1  # -1 = the training objective's; 0 = continuous-time bound; T = T-step bound
  # "zero_shot": perplexity on eval.zero_shot's benchmarks; --mode prepare with it downloads and tokenizes them
  config.eval.suite = "bound"  # --mode eval: "bound" (likelihood bound) | "samples" (sample quality) | "zero_shot"
  config.eval.zero_shot = "lambada,wikitext2,ptb,wikitext103,lm1b"  # suite=zero_shot: benchmarks to evaluate
  config.eval.samplers = "ancestral:128,exact:1"  # suite=samples: variants, name:steps or exact:tokens_per_call
  config.eval.judge = ""  # suite=samples: workdir of an AR run (objective=ar) that scores samples; "" = none
  config.eval.bound_steps = "16,64,256"  # --mode eval also reports the T-step bound for these T (report.md plot)
  config.eval.params = "ema"  # --mode eval evaluates "ema" or "raw" weights
  config.eval.split = "validation"  # split evaluated in training, logged as eval/...: "validation" or "test" (text8)

  config.sampler = ml_collections.ConfigDict()
  # "ancestral" (MD4) | "mean" (draw x0, then unmask) | "exact" (continuous-time reverse process, one event
  # at a time) | "confidence" (MaskGIT / LLaDA) | "semi_ar" (left-to-right blocks, sampler.semi_ar.inner in each) |
  # "parallel" (Fast-dLLM: blocks of sampler.block_length, every token above sampler.parallel.threshold per call) |
  # "remdm" (ReMDM: ancestral steps that may mask decoded tokens again, sampler.remdm.strategy)
  config.sampler.name = "ancestral"  # which sampler (see above and docs/sampling.md)
  config.sampler.steps = 128  # time-grid steps (ancestral, mean, confidence, remdm; semi_ar: all blocks together;
  # parallel: unused, its calls stop when a block is full)
  config.sampler.grid = "cosine"  # "cosine" | "uniform" time grid
  config.sampler.temperature = 1.0  # softmax temperature of token draws; 0 = argmax
  config.sampler.top_k = 0  # draw among the k most likely tokens; 0 = all
  config.sampler.top_p = 1.0  # nucleus: the fewest most likely tokens holding this mass; 1 = all
  config.sampler.block_length = 0  # semi_ar, parallel: positions per block (divides data.seq_len; parallel: 0 = one)
  config.sampler.cache = True  # skip a call whose input equals the last one (time-independent networks only)
  config.sampler.kv_cache = "none"  # "none" | "exact" (objective="bd3": finished blocks' keys/values cached) |
  # "prefix" | "dual" (sampler.name="parallel": Fast-dLLM's approximate caches, keys/values before / around a block)
  # objective="bd3", a tokenizer with end-of-text: a row stops at the block holding it (the rest is end-of-text; the
  # call ends when every row has); False draws every block. The samples eval suite always draws every block.
  config.sampler.stop_at_end = True  # bd3: a row ends at the block holding end-of-text
  config.sampler.guidance = 0.0  # class-conditional models: classifier-free guidance scale w (0 = none)
  config.sampler.params = "ema"  # which weights sample: "ema" | "raw"
  config.sampler.num_samples = 4  # samples written at each eval and by --mode sample
  config.sampler.batch_size = 16  # samples drawn per call: more are drawn (and written) this many at a time
  # Each sampler's own keys, next to its code (md4_jax/samplers/):
  config.sampler.exact = exact.config_group()  # name="exact" (or semi_ar's inner)
  config.sampler.confidence = confidence.config_group()  # name="confidence" (or semi_ar's inner)
  config.sampler.semi_ar = semi_ar.config_group()  # name="semi_ar"
  config.sampler.parallel = parallel.config_group()  # name="parallel" (or semi_ar's inner)
  config.sampler.remdm = remdm.config_group()  # name="remdm" (or semi_ar's inner)

  # Weights & Biases (pip install -e ".[wandb]"): metrics.jsonl's scalars, the config and each evaluation's samples,
  # one W&B run per workdir (a resumed run continues it; the run id is in config.json's _run.wandb_id).
  config.wandb = ml_collections.ConfigDict()
  config.wandb.project = ""  # W&B project to log to; "" = no W&B logging
  config.wandb.entity = ""  # W&B user or team; "" = your default entity
  config.wandb.name = ""  # the W&B run's display name; "" = the workdir's name
  config.wandb.mode = "online"  # "online" | "offline" (files in WORKDIR/wandb; `wandb sync` uploads them later)

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # data-parallel axis size; -1 = all remaining devices
  config.mesh.fsdp = 1  # parameter-sharded data-parallel axis
  config.mesh.tensor = 1  # tensor-parallel axis (heads, MLP, vocab)
  config.plugins = plugins
  parts.add_plugin_groups(config)
  return config
