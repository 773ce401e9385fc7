"""The objective protocol: every method every objective has, with the defaults an objective inherits.

An objective gets the network as a `models.Network` (the backbone with the batch's labels and the step's
dropout key bound: `net(z_BxL, t_B) -> logits_BxLxV`, and `net.features` / `net.head_loss` when the backbone
splits its output layer off) and returns per-example terms in nats.
"""

import types

from md4_jax.core.shifted import Shifted
from md4_jax.errors import UserError


class Objective:
  """Subclasses set `name` and implement `bound_name`, `terms` and `sample`; the rest has defaults."""

  name: str = ""
  exact = False  # True: --mode eval reports an exact likelihood (one draw, no T-step bounds), not an upper bound
  network_requirements = types.MappingProxyType({})  # what it needs of the backbone, e.g. {"causal": True}

  def __init__(self, config, vocab_size: int):
    self.config, self.vocab_size = config, vocab_size

  @classmethod
  def check_config(cls, config) -> None:
    """UserError for this objective's own config keys' bad values (run/config_check.py calls the chosen one's)."""
    del config

  @classmethod
  def check_sample_length(cls, config, length: int) -> None:
    """UserError unless --mode sample can draw sequences of `length` tokens (only the trained length, unless the
    objective generates others)."""
    if length != config.data.seq_len:
      refuse(f"--length={length}: objective={config.objective!r} generates the trained length only "
             f"(data.seq_len={config.data.seq_len}); objective='bd3' with sampler.kv_cache='exact' draws longer ones")

  def wrap_model(self, make_backbone):
    """`make(rngs)` for the module trained: the backbone, or the backbone with the objective's own parameters."""
    return make_backbone

  def own_learning_rates(self) -> dict:
    """{top-level parameter name: peak learning rate} for parameters with a rate of their own."""
    return {}

  def state_metrics(self, module) -> dict:
    """Metrics of the trained module's own state (a learned schedule's powers), logged with train/."""
    del module
    return {}

  def network(self, net):
    """The network as the objective reads it: under diffusion.shift, shifted one place right (core/shifted.py;
    MD4 and GenMD4 call it; block diffusion shifts inside its own layout)."""
    return Shifted(net, self.vocab_size) if self.config.diffusion.shift else net

  def network_context(self, step, key, length: int) -> dict:
    """Keyword arguments the network takes in training step `step` (traced) besides the inputs, drawn from `key`:
    MD4's annealed attention mask. Evaluation and sampling never pass them."""
    del step, key, length
    return {}

  def capacity_fraction(self, rows: int, length: int) -> float:
    """Share of a block of `rows` sequences of `length` tokens the output layer needs (1 = every position)."""
    del rows, length
    return 1.0

  def eval_extras(self, module, step: int, workdir, modality) -> list:
    """Files an evaluation writes beside the bound (GenMD4: its learned powers' plot); the paths written."""
    del module, step, workdir, modality
    return []

  def bound_name(self, timesteps: int) -> str:
    """What --mode eval calls the figure it reports."""
    raise NotImplementedError

  def terms(self, net, x0_BxL, key, *, token_mask_BxL, timesteps: int, t_B=None, capacity_fraction: float = 1.0,
            groups: int = 1, training: bool = False) -> dict:
    """[B] arrays in nats: `loss` (the bound: reported, and optimised unless there is a `surrogate`), `diffusion`,
    `reconstruction`, `prior`, `num_tokens`; with training=True maybe `surrogate` (optimised instead of `loss`,
    with extra gradient terms) and, through a gathered output layer, `fallback`."""
    raise NotImplementedError

  def sample(self, denoise, key, z_BxL, settings, *, time_dependent: bool, module):
    """(tokens_BxL, NFE, order_BxL): z's mask ids filled by the configured sampler; `module` is the whole
    trained module (an objective with parameters of its own reads them from it)."""
    raise NotImplementedError

  def conditional_loss(self, net, x0_BxL, key, *, scored_BxL, unknown_BxL, t_B):
    """[B] nats: -log p(x0 at scored_BxL | x0 at the other known positions), or (not `exact`) a one-draw estimate
    at times t_B of the bound on it, with the positions in unknown_BxL unknown (fed as mask ids): the evaluation
    harness's log-likelihood of a continuation (md4_jax/evals/continuation.py)."""
    del net, x0_BxL, key, scored_BxL, unknown_BxL, t_B
    raise UserError(f"objective={self.name!r} has no conditional likelihood for the evaluation harness yet "
                    "(md4, genmd4, bd3 and ar have)")

  def greedy_tokens(self, net, x0_BxL, *, scored_BxL, unknown_BxL):
    """[B, L] each position's most likely token with every scored (and unknown) position masked, one network call:
    the harness's is_greedy (the continuation is what a one-call greedy decoder writes; AR: greedy decoding)."""
    del net, x0_BxL, scored_BxL, unknown_BxL
    raise UserError(f"objective={self.name!r} has no greedy decode for the evaluation harness yet")


def check_shift(config) -> None:
  """diffusion.shift=True runs the network on a shifted input, which the parallel sampler's approximate caches
  (they call the network's cached passes themselves) do not do."""
  check_shift_cache(config.diffusion.shift, config.sampler.kv_cache)


def check_shift_cache(shift: bool, kv_cache: str) -> None:
  """The same, where sampling starts (an eval.samplers variant changes the cache without a config check)."""
  if shift and kv_cache in ("prefix", "dual"):
    refuse(f"sampler.kv_cache={kv_cache!r} is not supported with diffusion.shift=True (its cached passes read the "
           "unshifted input): set sampler.kv_cache='none'")


def refuse(message: str) -> None:
  """For check_config: one error naming the key and the fix."""
  raise UserError(message)
