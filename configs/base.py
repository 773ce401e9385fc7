"""Every config key, with its default. Experiment configs import this and override a few keys.

Keys not defined here are an error, and so are values of the wrong type.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # base PRNG seed: init, data order, time/mask draws, eval and sample keys
  # "md4": masked diffusion, the negative ELBO | "genmd4": MD4 with a learned per-token schedule | "bd3": block
  # diffusion (blocks of diffusion.block_size left to right; needs model.backbone="transformer") | "ar": causal
  # next-token baseline, exact likelihood (needs model.backbone="transformer"). Replaces model.kind.
  config.objective = "md4"  # what a step optimises (see the lines above)

  config.data = ml_collections.ConfigDict()
  # Text: "embedded" (a Wikipedia excerpt shipped with md4-jax) | "textfile" | "tokens" (your token ids) | "text8" |
  # "openwebtext" | "fineweb_edu" | "lm1b". Images: "digits" (shipped with md4-jax) | "cifar10" | "imagenet64".
  # text8, the hub sets, cifar10 and imagenet64 are downloaded once by `--mode prepare`.
  config.data.source = "embedded"  # which data (see the lines above)
  config.data.path = ""  # the file for source="textfile" (UTF-8 text) or "tokens" (.npy, or raw .bin)
  config.data.tokenizer = "char"  # "char" | "byte" | "gpt2" (GPT-2 BPE via tiktoken, from a local file)
  config.data.tokenizer_path = ""  # gpt2.tiktoken file; "" = the copy that ships with md4-jax
  config.data.vocab_size = 0  # source="tokens" only: ids are in [0, vocab_size)
  config.data.token_dtype = ""  # source="tokens", .bin files: "uint16" (default), "uint32" or "int32"
  config.data.seq_len = 128  # tokens per training sequence (text; an image's length is H * W * C)
  config.data.eval_fraction = 0.05  # held-out share, from the end ("embedded", "textfile", "tokens")
  config.data.dir = "~/md4_data"  # where `--mode prepare` writes datasets and training reads them
  config.data.manual_dir = ""  # already-downloaded raw files (text8.zip, hub shards); "" = download
  # imagenet64: "" = van den Oord et al.'s release (the likelihood tables', no labels) or "labeled" (Chrabaszcz
  # et al.'s npz release, 1000 classes)
  config.data.subset = ""  # fineweb_edu: the hub subset ("" = sample-10BT); imagenet64: see the line above
  config.data.max_documents = 0  # prepare only the first N documents (images: per split); 0 = all; small trials

  config.model = ml_collections.ConfigDict()
  config.model.backbone = "transformer"  # the network: "transformer" (tokens) | "unet" | "uvit" (images)
  # model.num_layers .. model.positions: the transformer backbone's keys.
  config.model.num_layers = 4  # transformer blocks
  config.model.width = 128  # model dimension
  config.model.num_heads = 4  # attention heads (width / num_heads must be even)
  config.model.mlp_ratio = 4.0  # GLU hidden size = mlp_ratio * width (unless mlp_hidden is set)
  config.model.mlp_hidden = 0  # GLU hidden size; 0 = mlp_ratio * width (the published text models: 2048 at width 768)
  config.model.cond_dim = 0  # width of the time condition the adaLN modulations read; 0 = width (published: 64)
  config.model.positions = "rope"  # "rope" | "learned"
  # Every backbone:
  config.model.time_conditioning = True  # condition on t (adaLN-zero / added embedding); False = time-independent
  config.model.class_conditional = False  # image sources with labels: condition on the class (label embedding)
  config.model.label_dropout = 0.1  # class_conditional: share of training labels replaced by the null class (for guidance)
  config.model.dtype = "float32"  # compute dtype: "float32" | "bfloat16" (params, optimizer, softmax, loss stay float32)
  config.model.remat = "none"  # "none" | "block": recompute each block in the backward pass (less memory, ~1/3 more compute)
  config.model.attention = "auto"  # "auto" (cuDNN's fused kernel on a GPU in bfloat16, else XLA) | "xla" | "cudnn"
  config.model.scan_layers = False  # transformer: loop one block over stacked parameters (compile time flat in depth)
  # Same function and checkpoint layout either way, so a resumed run may change it; 0 leaves no per-layer
  # activation stacks to fill and copy back out (the GPU's choice), but compile time grows with depth.
  config.model.scan_unroll = 1  # with scan_layers: layers per loop iteration; 1 = a rolled loop, 0 = all of them

  config.model.unet = ml_collections.ConfigDict()  # backbone="unet": residual blocks at full resolution
  config.model.unet.channels = 128  # width of every residual block
  config.model.unet.num_res_blocks = 32  # blocks going down (num_res_blocks + 1 coming up), around attention
  config.model.unet.embed_dim = 0  # per-sub-pixel embedding size before the input conv; 0 = channels
  config.model.unet.dropout = 0.1  # dropout inside every residual block

  config.model.uvit = ml_collections.ConfigDict()  # backbone="uvit": residual blocks around a DiT middle
  config.model.uvit.channels = 256  # width of the residual blocks and of the condition
  config.model.uvit.num_res_blocks = 8  # blocks going down (num_res_blocks + 1 coming up)
  config.model.uvit.embed_dim = 0  # per-sub-pixel embedding size before the input conv; 0 = channels
  config.model.uvit.patch_size = 2  # DiT patch size (64x64 -> 1,024 tokens)
  config.model.uvit.width = 768  # DiT width
  config.model.uvit.num_layers = 20  # DiT blocks (adaLN-zero)
  config.model.uvit.num_heads = 12  # DiT attention heads
  config.model.uvit.mlp_ratio = 4.0  # DiT GELU MLP hidden size = mlp_ratio * width
  config.model.uvit.dropout = 0.1  # dropout in the residual blocks and the DiT

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.schedule = "linear"  # "linear" | "cosine" | "polyK" (e.g. "poly2") | "geometric"
  config.diffusion.timesteps = 0  # 0 = continuous-time ELBO; T > 0 = T-step discrete-time ELBO
  config.diffusion.antithetic = True  # low-discrepancy t across the batch (unbiased, lower variance)
  config.diffusion.block_size = 4  # objective="bd3": tokens per block L' (divides data.seq_len; L' = L is MD4)
  # objective="bd3": training draws block times in [clip_low, clip_high] (BD3-LM's clipped schedule: less gradient
  # variance; train/loss is then that clipped objective, not a bound); evaluation always takes t in [0, 1).
  config.diffusion.clip_low = 0.0  # bd3: lowest training time (0 = the bound)
  config.diffusion.clip_high = 1.0  # bd3: highest training time (1 = the bound)
  config.diffusion.genmd4 = ml_collections.ConfigDict()  # objective="genmd4": a learned schedule per token
  config.diffusion.genmd4.initial_power = 1.0  # w_v at the start: alpha_{t,v} = 1 - t^w_v (1 = linear)
  config.diffusion.genmd4.t_min = 1e-3  # times drawn in [t_min, 1]; the reconstruction term is taken at t_min
  config.diffusion.genmd4.network_draws = 2  # draws of z_t the network's gradient uses (the schedule's: always 2)
  config.diffusion.genmd4.learning_rate = -1.0  # the schedule's peak learning rate; -1 = train.learning_rate

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
  # at a time) | "confidence" (MaskGIT / LLaDA) | "semi_ar" (left-to-right blocks, sampler.inner in each) |
  # "parallel" (Fast-dLLM: blocks of sampler.block_length, every token above sampler.threshold per call)
  config.sampler.name = "ancestral"  # which sampler (see above and docs/sampling.md)
  config.sampler.steps = 128  # time-grid steps (ancestral, mean, confidence; semi_ar: all blocks together;
  # parallel: unused, its calls stop when a block is full)
  config.sampler.grid = "cosine"  # "cosine" | "uniform" time grid
  config.sampler.temperature = 1.0  # softmax temperature of token draws; 0 = argmax
  config.sampler.top_k = 0  # draw among the k most likely tokens; 0 = all
  config.sampler.top_p = 1.0  # nucleus: the fewest most likely tokens holding this mass; 1 = all
  config.sampler.tokens_per_call = 1  # exact: unmasking events per network call (k > 1 is approximate)
  config.sampler.choice_temperature = 4.5  # confidence: Gumbel noise on log-confidence, annealed to 0; 0 = LLaDA
  config.sampler.block_length = 0  # semi_ar, parallel: positions per block (divides data.seq_len; parallel: 0 = one)
  config.sampler.inner = "confidence"  # semi_ar: "ancestral" | "mean" | "exact" | "confidence" within a block
  config.sampler.cache = True  # skip a call whose input equals the last one (time-independent networks only)
  config.sampler.kv_cache = "none"  # "none" | "exact" (objective="bd3": finished blocks' keys/values cached) |
  # "prefix" | "dual" (sampler.name="parallel": Fast-dLLM's approximate caches, keys/values before / around a block)
  config.sampler.cache_refresh = 0  # prefix / dual: whole-sequence refresh every this many calls; 0 = per block
  config.sampler.threshold = 0.9  # parallel: unmask every token whose confidence exceeds it (at least one per call)
  # "random" (uniform, MD4's order; keeps unconditional samples' entropy) | "confidence" (Fast-dLLM / LLaDA)
  config.sampler.fallback = "random"  # parallel: the one position unmasked when none passes the threshold
  config.sampler.guidance = 0.0  # class-conditional models: classifier-free guidance scale w (0 = none)
  config.sampler.params = "ema"  # which weights sample: "ema" | "raw"
  config.sampler.num_samples = 4  # samples written at each eval and by --mode sample
  config.sampler.batch_size = 16  # samples drawn per call: more are drawn (and written) this many at a time

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
  return config
