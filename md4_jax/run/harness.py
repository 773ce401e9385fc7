"""EleutherAI's lm-evaluation-harness on a trained run: the harness model `md4_jax` (install the `harness` extra).

  python -m md4_jax.run.harness --model md4_jax --model_args workdir=DIR[,step=N,mc_samples=K,params=ema|raw,
      sampler=parallel:0.9:dual,seed=S] --tasks TASKS [--batch_size B] [any other lm_eval flag]

(from the repository root, like launch.py: the harness has no plugin discovery for models, so this registers
`md4_jax` and hands the command line to lm_eval's own.) In Python: `lm_eval.simple_evaluate(model=Md4JaxLM(
workdir=DIR), tasks=[...])`.

- loglikelihood(context, continuation): AR exact; MD4 / GenMD4 / BD3 the Monte Carlo estimate of the bound on
  -log p(continuation | context) over mc_samples stratified draws (an upper bound in expectation: the harness's
  log-likelihood is its negative, a lower bound). is_greedy: whether one network call with the whole
  continuation masked has the continuation as its argmax (AR: greedy decoding, exactly).
- loglikelihood_rolling(text): the same over windows of data.seq_len, no context before the text.
- generate_until(context, {until, max_gen_toks}): the run's sampler (`sampler=` one eval.samplers item to change
  it), cut at end-of-text (when the tokenizer has one) and at the first `until` string.
"""

import json

import numpy as np

from md4_jax.data import modality as modalities
from md4_jax.engine import sample_ends, saved_config, sharding
from md4_jax.engine.checkpoints import restore_state
from md4_jax.engine.experiment import Experiment
from md4_jax.errors import UserError
from md4_jax.evals import continuation, samples
from md4_jax.run import config_check
from md4_jax.storage import paths as storage

DEFAULT_MAX_GEN_TOKS = 256


def load_run(workdir: str, step: int | None = None, params: str = "ema", sampler: str = ""):
  """(the run's Experiment, its restored params, its tokenizer) from a workdir alone."""
  try:
    from configs import base  # noqa: PLC0415 (the repository's, as for launch.py: every key's default)
  except ImportError:
    raise UserError("run the harness from the md4-jax repository's root (it reads configs/base.py)") from None
  path = storage.path(workdir)
  if not (path / "config.json").is_file():
    raise UserError(f"workdir={workdir!r} holds no run (no config.json); train one first")
  config = saved_config.as_config(json.loads((path / "config.json").read_text()), base.get_config())
  if sampler:
    config.sampler.update(samples.parse_variants(sampler)[0])
  run = config_check.validate(config, base.get_config(), "eval")
  modality = modalities.load(path, config.data.seq_len)
  if modality is None or modality.kind != "text":
    raise UserError(f"workdir={workdir!r} is not a text run; the harness evaluates language models")
  experiment = Experiment(config, modality, sharding.make_mesh(config.mesh), run.model)
  state = restore_state(path / "checkpoints", step, experiment.abstract_state, experiment.state_summary)
  if params not in ("ema", "raw"):
    raise UserError(f"params={params!r}: choose 'ema' (the default) or 'raw'")
  return experiment, state["ema_params" if params == "ema" else "params"], modality.tokenizer


def encode(tokenizer, text: str) -> np.ndarray:
  return np.asarray(tokenizer.encode(text), np.int32)


class Harness:
  """The harness's three request kinds on one run, without lm_eval itself (Md4JaxLM wraps it)."""

  def __init__(self, workdir: str, step=None, mc_samples: int = 8, batch_size: int = 16, params: str = "ema",
               sampler: str = "", seed: int = 0):
    self.experiment, params, self.tokenizer = load_run(workdir, None if step is None else int(step), params, sampler)
    self.scorer = continuation.Scorer(self.experiment, params, draws=int(mc_samples), batch_size=int(batch_size),
                                      seed=int(seed))

  def loglikelihood(self, pairs) -> list[tuple[float, bool]]:
    requests = [(encode(self.tokenizer, context), encode(self.tokenizer, text)) for context, text in pairs]
    empty = [index for index, (_, ids) in enumerate(requests) if not len(ids)]
    if empty:
      raise UserError(f"request {empty[0]} has an empty continuation: nothing to score")
    return [(-score.nats, score.greedy) for score in self.scorer.score(requests)]

  def loglikelihood_rolling(self, texts) -> list[float]:
    return [-score.nats for score in self.scorer.score([(np.zeros(0, np.int32), encode(self.tokenizer, text))
                                                        for text in texts])]

  def generate_until(self, requests) -> list[str]:
    """requests: (context, {"until": [...], "max_gen_toks": N}) pairs; the harness's own gen_kwargs."""
    by_length = {}
    for index, (_, kwargs) in enumerate(requests):
      by_length.setdefault(int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)), []).append(index)
    texts = [""] * len(requests)
    for max_tokens, indices in by_length.items():
      drawn = self.scorer.generate([encode(self.tokenizer, requests[i][0]) for i in indices], max_tokens)
      for index, tokens in zip(indices, drawn):
        until = requests[index][1].get("until") or []
        texts[index] = sample_ends.cut(tokens, self.experiment.modality.decode_bytes, self.tokenizer.eos_id,
                                       [until] if isinstance(until, str) else until)[0]
    return texts


def register():
  """Registers `md4_jax` with lm_eval (needs the harness extra); returns the model class."""
  try:
    from lm_eval.api.model import LM  # noqa: PLC0415 (optional: the harness extra)
    from lm_eval.api.registry import register_model  # noqa: PLC0415
  except ImportError:
    raise UserError("the evaluation harness is not installed: pip install -e '.[harness]'") from None

  class Md4JaxLM(LM):
    """lm_eval's model protocol over `Harness`."""

    def __init__(self, workdir: str, step=None, mc_samples: int = 8, batch_size=16, params: str = "ema",
                 sampler: str = "", seed: int = 0, **unused):
      super().__init__()
      del unused  # the harness passes device / max_batch_size, which a JAX run does not take
      self.harness = Harness(workdir, step, mc_samples, 16 if batch_size in (None, "auto") else int(batch_size),
                             params, sampler, seed)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
      return self.harness.loglikelihood([request.args for request in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
      return self.harness.loglikelihood_rolling([request.args[0] for request in requests])

    def generate_until(self, requests, disable_tqdm: bool = False):
      return self.harness.generate_until([request.args for request in requests])

  from lm_eval.api import registry  # noqa: PLC0415
  if "md4_jax" not in registry.model_registry:
    register_model("md4_jax")(Md4JaxLM)
  return registry.get_model("md4_jax")


def main() -> None:
  register()
  from lm_eval.__main__ import cli_evaluate  # noqa: PLC0415

  cli_evaluate()


if __name__ == "__main__":
  main()
