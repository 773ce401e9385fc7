"""Train state, the jitted train/eval steps, and the sampler bound to a model.

State is a plain dict pytree {step, params, ema_params, opt_state}; nothing
random lives in it: each step's key is fold_in(base_key, step), so a resumed
run draws exactly the numbers an uninterrupted run would.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from md4_jax import models, objectives, samplers
from md4_jax.core import diffusion
from md4_jax.engine import checkpoints, sharding
from md4_jax.errors import UserError
from md4_jax.interop import hf_weights

# fold_in tags of the step key: network dropout, label dropout, the objective's network context (annealed masks)
DROPOUT_SALT, LABEL_SALT, CONTEXT_SALT = 101, 102, 103


def eval_timesteps(config) -> int:
  """The bound eval reports: eval.timesteps, or (at -1) the training objective's diffusion.timesteps."""
  return config.diffusion.timesteps if config.eval.timesteps < 0 else config.eval.timesteps


def learning_rate_schedule(train_cfg, peak: float | None = None):
  """Linear warm-up to `peak` (default train.learning_rate), then cosine decay to 10% of it at train.num_steps."""
  peak = train_cfg.learning_rate if peak is None else peak
  warmup = min(train_cfg.warmup_steps, max(train_cfg.num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(train_cfg.num_steps, warmup + 1),
                                            end_value=0.1 * peak)


def decays(params):
  """Weight decay on matrices only: True where a parameter has two or more axes besides a scanned model's
  stacked "layers" axis (a stacked norm scale [layers, D] is a vector per layer, so it is not decayed)."""
  def is_matrix(leaf):
    names = leaf.get_metadata().get("out_sharding") or () if isinstance(leaf, nnx.Variable) else ()
    return leaf.ndim - tuple(names).count(models.LAYER_AXIS) > 1
  return jax.tree.map(is_matrix, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_optimizer(train_cfg, own_rates: dict | None = None) -> optax.GradientTransformation:
  """AdamW (decay on matrices only) after global-norm clipping (train.grad_clip = 0: none).

  own_rates {"schedule": peak}: the parameters under that top-level name get their own peak learning
  rate (same warm-up and decay): their AdamW updates are scaled by peak / train.learning_rate.
  """
  chain = [optax.clip_by_global_norm(train_cfg.grad_clip) if train_cfg.grad_clip else optax.identity(),
           optax.adamw(learning_rate_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2,
                       weight_decay=train_cfg.weight_decay,
                       mask=decays)]
  for name, peak in (own_rates or {}).items():
    under_name = lambda params, name=name: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, _: path[0].key == name, params)
    chain.append(optax.masked(optax.scale(peak / train_cfg.learning_rate), under_name))
  return optax.chain(*chain)


def ema_decay(step, max_decay: float):
  """Warmed-up EMA decay (1 + n) / (10 + n), capped: short runs do not average in the init."""
  return jnp.minimum(max_decay, (1.0 + step) / (10.0 + step))


class Experiment:
  """Everything a run needs that follows from the config and the modality: model, objective, optimizer,
  shardings, jitted steps. Nothing here depends on which objective, backbone or modality it is."""

  def __init__(self, config, modality, mesh, model_parts: objectives.Parts | None = None):
    """model_parts: the objective and backbone the config names, as the run's validation found them (default:
    found here by name)."""
    self.config, self.mesh, self.modality = config, mesh, modality
    self.vocab_size = modality.vocab_size
    self.model_parts = model_parts or objectives.chosen(config)
    try:
      self.objective, self.model_config, self.make_model = objectives.build_model(config, modality, self.model_parts)
    except ValueError as error:
      raise UserError(f"bad config value: {error}") from error
    self.num_classes = self.model_config.num_classes  # 0: the network reads no labels
    self.optimizer = make_optimizer(config.train, self.objective.own_learning_rates())
    abstract_model = nnx.eval_shape(lambda: self.make_model(nnx.Rngs(0)))
    self.graphdef, _ = nnx.split(abstract_model)
    self.base_key = jax.random.key(config.seed)
    self.grad_accum = config.train.grad_accum
    # Rows per device-local block of the batch: the masked-position gather runs per block.
    self.batch_groups = math.prod(mesh.shape[axis] for axis in sharding.BATCH_AXES)
    micro_batch = config.train.batch_size // config.train.grad_accum
    if micro_batch % self.batch_groups:
      self.batch_groups = 1
    self.capacity_fraction = self.objective.capacity_fraction(micro_batch // self.batch_groups, modality.length)
    if self.capacity_fraction < 1.0 and not abstract_model.splits_head:
      raise UserError(f"train.logits_capacity={config.train.logits_capacity} needs a backbone with a separate "
                      f"output layer; model.backbone={config.model.backbone!r} has none: set train.logits_capacity=-1")
    abstract = jax.eval_shape(self._init, self.base_key)
    sharding.check_declared_sharding(abstract["params"], mesh)
    self.state_shardings = sharding.state_shardings(abstract, mesh)
    self.abstract_state = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract, self.state_shardings)
    self.init_state = jax.jit(self._init, out_shardings=self.state_shardings)
    self.train_step = jax.jit(self._train_step, donate_argnums=0,
                              out_shardings=(self.state_shardings, sharding.replicated(mesh)))
    # train_steps(state, batches) runs len(batches) steps in one call (the loop's train.steps_per_call).
    self.train_steps = jax.jit(self._train_steps, donate_argnums=0,
                               out_shardings=(self.state_shardings, sharding.replicated(mesh)))
    # Outputs the host reads are replicated: with several processes each can then read them whole.
    self.eval_step = jax.jit(self._eval_step, out_shardings=sharding.replicated(mesh))
    self.state_summary = jax.jit(checkpoints.state_summary, out_shardings=sharding.replicated(mesh))
    end_id = getattr(getattr(modality, "tokenizer", None), "eos_id", None)  # text with an end-of-text token
    self.sampler_settings = dataclasses.replace(samplers.settings(config.sampler),
                                                end_id=-1 if end_id is None else int(end_id))
    # sample(params, key, z_BxL, label_B) -> (tokens_BxL, NFE, order_BxL): fills z's mask ids (vocab_size),
    # keeps its other tokens; label_B is read by class-conditional models only.
    self.sample = jax.jit(self._sample, out_shardings=sharding.replicated(mesh))
    # sample_segment(params, key, z_BxS, label_B, first_block, cache, clock, total_length=N) -> (tokens_BxS, NFE,
    # order_BxS, cache): objectives that draw long sequences a segment at a time (BD3's exact cache).
    self.sample_segment = jax.jit(self._sample_segment, static_argnames="total_length", donate_argnums=5,
                                  out_shardings=sharding.replicated(mesh))

  def init_state_from(self, directory: str):
    """A new state whose params and EMA params are a Hugging Face checkpoint's (model.init_from), read one tensor
    at a time onto the mesh; what the checkpoint lacks (an objective's own parameters) keeps its initial value."""
    state = self.init_state(self.base_key)
    return self.state_with_params(state, hf_weights.load(directory, state["params"],
                                                         self.config.model.transformer.scan_layers))

  def state_with_params(self, state, params):
    """`state` (a new one) with `params` as its params and EMA params, placed with the state's shardings."""
    copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=self.state_shardings["params"])
    return {**state, "params": copy(params), "ema_params": copy(params)}  # two buffers: the step donates the state

  def with_overrides(self, group: str, overrides: dict) -> "Experiment":
    """The same run with config[group] keys changed: a new Experiment (settings are compiled into its steps)."""
    config = self.config.copy_and_resolve_references()
    config[group].update(overrides)
    return Experiment(config, self.modality, self.mesh, self.model_parts)

  def eval_extras(self, params, step: int, workdir) -> list:
    """The objective's files beside an evaluation (GenMD4: its learned powers); the paths written."""
    return self.objective.eval_extras(nnx.merge(self.graphdef, params), step, workdir, self.modality)

  def num_params(self) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(self.abstract_state["params"]))

  def _init(self, key):
    model = self.make_model(nnx.Rngs(params=jax.random.fold_in(key, 0)))
    _, params = nnx.split(model)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "ema_params": params,
            "opt_state": self.optimizer.init(params)}

  def _network(self, params, batch, key=None, step=None):
    """The backbone with the batch's labels bound; with a (training) key, dropout on and labels dropped to
    the null class with probability model.label_dropout (so the model also learns p(x), for guidance); with the
    training step too, the objective's network context for that step (`Objective.network_context`)."""
    label_B = batch.get("label") if self.num_classes else None
    dropout_key, context = None, {}
    if key is not None:
      if step is not None:
        context = self.objective.network_context(step, jax.random.fold_in(key, CONTEXT_SALT),
                                                 batch["tokens"].shape[1])
      dropout_key = jax.random.fold_in(key, DROPOUT_SALT)
      if label_B is not None:
        dropped_B = jax.random.bernoulli(jax.random.fold_in(key, LABEL_SALT), self.config.model.label_dropout,
                                         label_B.shape)
        label_B = jnp.where(dropped_B, self.num_classes, label_B)
    return models.Network(nnx.merge(self.graphdef, params), label_B, dropout_key, context)

  def _terms(self, params, batch, key, t_B=None, timesteps=None, training=False, step=None):
    timesteps = self.config.diffusion.timesteps if timesteps is None else timesteps
    return self.objective.terms(
        self._network(params, batch, key if training else None, step), batch["tokens"], key,
        token_mask_BxL=batch["token_mask"], timesteps=timesteps, t_B=t_B,
        capacity_fraction=self.capacity_fraction, groups=self.batch_groups, training=training)

  def _loss_and_grads(self, params, batch, key, total_tokens, step=None):
    """Gradient of (sum of per-example losses) / total_tokens, and the metric sums, for one microbatch."""

    def loss_fn(params):
      terms = self._terms(params, batch, key, training=True, step=step)
      sums = {name: jnp.sum(value) for name, value in terms.items() if name not in ("num_tokens", "fallback")}
      sums["fallback"] = terms.get("fallback", jnp.zeros(()))
      # What is optimised: the bound, or an objective's surrogate with the same value's gradient plus more
      # (GenMD4: the REINFORCE term of its schedule). `loss` stays the bound either way.
      return sums.get("surrogate", sums["loss"]) / total_tokens, sums

    (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, sums

  def _accumulated_grads(self, params, batch, key, step=None):
    """Gradient of the batch's loss in nats per real token, over train.grad_accum microbatches.

    Microbatch i uses key fold_in(key, i) (its own times and masks); each gradient is of its
    sum of losses over the whole batch's token count, so their sum is the batch gradient.
    """
    total_tokens = jnp.sum(batch["token_mask"]).astype(jnp.float32)
    if self.grad_accum == 1:
      grads, sums = self._loss_and_grads(params, batch, key, total_tokens, step)
    else:
      # Microbatch i = rows i, i + k, i + 2k, ...: every device keeps its own rows (no resharding).
      micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(-1, self.grad_accum, *x.shape[1:]), 0, 1), batch)

      def add_microbatch(carry, index_and_batch):
        index, microbatch = index_and_batch
        grads, sums = self._loss_and_grads(params, microbatch, jax.random.fold_in(key, index), total_tokens, step)
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(self._loss_and_grads, params, jax.tree.map(
          lambda x: x[0], micro), key, total_tokens, step))
      (grads, sums), _ = jax.lax.scan(add_microbatch, zeros, (jnp.arange(self.grad_accum), micro))
      sums["fallback"] = sums["fallback"] / self.grad_accum
    per_token = {name: value / total_tokens for name, value in sums.items() if name != "fallback"}
    return grads, per_token, sums["fallback"]

  def train_call(self, state, batches):
    """len(batches) optimizer steps in one jitted call: one batch through train_step, several through
    train_steps. Returns (state, metrics); with several batches each metric has a leading axis."""
    if len(batches) == 1:
      return self.train_step(state, batches[0])
    return self.train_steps(state, batches)

  def _train_steps(self, state, batches):
    """Steps over a tuple of batches in one program (`lax.scan`), metrics stacked along a leading axis. On the
    CPU each executed program allocates XLA's temporaries afresh from the kernel (zeroed pages), so K steps per
    call pay for that once instead of K times (benchmarks/RESULTS.md, 2026-12-03)."""
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *batches)
    return jax.lax.scan(self._train_step, state, stacked)

  def _train_step(self, state, batch):
    key = jax.random.fold_in(self.base_key, state["step"])
    grads, per_token, fallback = self._accumulated_grads(state["params"], batch, key, state["step"])
    updates, opt_state = self.optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    decay = ema_decay(state["step"], self.config.train.ema_decay)
    ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state["ema_params"], params)
    metrics = {**per_token, "bits": per_token["loss"] / math.log(2),
               "grad_norm": optax.tree.norm(grads), "update_norm": optax.tree.norm(updates),
               "param_norm": optax.tree.norm(params), "ema_decay": decay, "logits_fallback": fallback,
               "learning_rate": learning_rate_schedule(self.config.train)(state["step"])}
    metrics.update(self.objective.state_metrics(nnx.merge(self.graphdef, params)))
    new_state = {"step": state["step"] + 1, "params": params, "ema_params": ema_params, "opt_state": opt_state}
    return new_state, metrics

  def _eval_step(self, params, batch, key):
    """Sums over the batch (padding excluded) so a full pass adds up exactly.

    Each sequence's bound is the mean over eval.time_samples = K draws of t, stratified per sequence
    (`diffusion.stratified_times`), each with its own masks; eval.timesteps picks the bound
    (-1: the training objective's, 0: continuous time, T: the T-step discrete-time bound).
    """
    cfg = self.config.eval
    timesteps = eval_timesteps(self.config)
    draws = 1 if self.objective.exact else cfg.time_samples  # an exact likelihood needs no draws of t
    time_key, mask_key = jax.random.split(key)
    t_KxB = diffusion.stratified_times(time_key, batch["tokens"].shape[0], draws, self.config.diffusion.antithetic)

    def one_draw(_, draw):
      k, t_B = draw
      return None, self._terms(params, batch, jax.random.fold_in(mask_key, k), t_B=t_B, timesteps=timesteps)

    _, terms_K = jax.lax.scan(one_draw, None, (jnp.arange(draws), t_KxB))
    terms = jax.tree.map(lambda x: jnp.mean(x, axis=0), terms_K)
    real_B = (terms["num_tokens"] > 0).astype(jnp.float32)
    sums = {f"{name}_sum": jnp.sum(terms[name] * real_B) for name in ("loss", "diffusion", "reconstruction", "prior")}
    sums["loss_sq_sum"] = jnp.sum(jnp.square(terms["loss"]) * real_B)
    sums["num_tokens"] = jnp.sum(terms["num_tokens"])
    sums["num_sequences"] = jnp.sum(real_B)
    return sums

  def _denoiser(self, params, label_B):
    """(the model, the network with labels label_B); sampler.guidance > 0 (class-conditional models) mixes in the
    unconditional prediction (classifier-free guidance, see samplers.guided)."""
    model = nnx.merge(self.graphdef, params)
    denoise = models.Network(model, label_B if self.num_classes else None)
    if self.num_classes and self.sampler_settings.guidance:
      null_B = jnp.full_like(label_B, self.num_classes)
      denoise = samplers.guided(lambda z, t, label: models.Network(model, label)(z, t), label_B, null_B,
                                self.sampler_settings.guidance)
    return model, denoise

  def _sample(self, params, key, z_BxL, label_B):
    model, denoise = self._denoiser(params, label_B)
    return self.objective.sample(denoise, key, z_BxL, self.sampler_settings,
                                 time_dependent=self.model_config.time_conditioning, module=model)

  def _sample_segment(self, params, key, z_BxS, label_B, first_block, cache, clock, *, total_length: int):
    model, denoise = self._denoiser(params, label_B)
    return self.objective.sample_segment(denoise, key, z_BxS, self.sampler_settings, module=model,
                                         first_block=first_block, cache=cache, total_length=total_length, clock=clock)

  def empty_sample_cache(self, batch_size: int):
    """What sample_segment's first call takes as its cache."""
    return nnx.merge(self.graphdef, self.abstract_state["params"]).empty_cache(batch_size)
