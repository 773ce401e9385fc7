"""Training objectives by name (`config.objective`): what a step optimises, what eval reports, how to sample.

An objective gets the network as a `Network` (the backbone with the batch's labels and the
step's dropout key bound: `net(z_BxD, t_B) -> logits_BxDxV`, and `net.features` /
`net.head_logits` when the backbone splits them) and returns per-example terms in nats:
`loss` (the bound: what is reported, and optimised unless there is a `surrogate`), `diffusion`,
`reconstruction`, `prior`, `num_tokens`; `terms(..., training=True)` may add `surrogate` (optimised
instead of `loss`, with extra gradient terms). Optional hooks: `wrap_model(make_backbone)` (parameters
of the objective's own beside the backbone's), `own_learning_rates()`, `state_metrics(module)`.
`sample(denoise, key, z, settings, time_dependent=..., module=...)` gets the whole merged module.
"""

from md4_jax.objectives.ar import Autoregressive
from md4_jax.objectives.genmd4 import GenMD4
from md4_jax.objectives.md4 import MD4

OBJECTIVES = {"md4": MD4, "genmd4": GenMD4, "ar": Autoregressive}
NAMES = tuple(OBJECTIVES)


def get(name: str):
  """The objective class called `name`; ValueError naming the choices otherwise."""
  if name not in OBJECTIVES:
    raise ValueError(f"objective={name!r}: choose one of {NAMES}")
  return OBJECTIVES[name]
