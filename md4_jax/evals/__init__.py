"""Eval suites by name (`eval.suite`), what `--mode eval` runs: a built-in one (SUITES) or a module outside the
package named by its path (md4_jax/parts.py). Each suite is a module with

- `load(config, workdir, modality)`: its inputs (the held-out data, benchmark rows...), read before
  the checkpoint is restored so a missing input fails fast;
- `run(context) -> result`: evaluates the restored params, writes eval/<...>.json and .md (and
  metrics.jsonl lines, eval/report.md) through `output.write_eval_files`, returns its record.

| suite | what |
|---|---|
| bound | the likelihood bound on every held-out split, and the T-step bounds (bits/token or bits/dim) |
| samples | sample quality per sampler: network calls, seconds, generative perplexity under a judge, unigram entropy |
| zero_shot | text: perplexity on LAMBADA, WikiText2/103, PTB, 1BW in MD4's table layout |
"""

import dataclasses

from etils import epath

from md4_jax import parts
from md4_jax.evals import bound, samples, zero_shot

SUITES = {"bound": bound, "samples": samples, "zero_shot": zero_shot}
NAMES = tuple(SUITES)


def get(name: str):
  """The suite module called `name` (built-in, or a module path); UserError naming the choices."""
  return parts.find("suite", name, SUITES)


@dataclasses.dataclass(frozen=True)
class Context:
  """What a suite's `run` gets."""
  config: object
  experiment: object  # train.Experiment
  params: object  # the restored EMA or raw params (eval.params)
  step: int
  workdir: epath.Path
  inputs: object  # what the suite's `load` returned
  sample_key: object  # the key samples are drawn with (the training dumps' at this step)
