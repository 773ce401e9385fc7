"""The `samples` suite (`--mode eval --eval.suite=samples`): generative perplexity under a judge, unigram entropy.

For each sampler variant in eval.samplers ("ancestral:100,exact:1,parallel:0.9:dual,remdm:100:loop": name:steps,
exact:k tokens per call or parallel:threshold, optionally :kv_cache; remdm:steps optionally :strategy) it draws sampler.num_samples unconditional samples from
the checkpoint and reports
- generative perplexity: exp(mean next-token NLL per token) of the samples under the judge, an
  autoregressive run of this framework (eval.judge = its workdir; latest checkpoint, EMA params), with its
  standard error over the samples;
- unigram entropy in bits of the samples' token frequencies (a repetitive sampler scores low; the
  held-out data's own unigram entropy is printed beside it);
- network calls and seconds per batch.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from md4_jax import models, objectives
from md4_jax.data import modality as modalities
from md4_jax.data import pipeline
from md4_jax.engine import generate, saved_config, sharding
from md4_jax.engine.checkpoints import restore_state
from md4_jax.engine.experiment import Experiment
from md4_jax.errors import UserError
from md4_jax.evals import output
from md4_jax.samplers import remdm
from md4_jax.storage import paths as storage


def unigram_entropy_bits(tokens, vocab_size: int) -> float:
  """Entropy of the token frequencies over all positions of all samples, in bits."""
  counts = np.bincount(np.asarray(tokens).ravel(), minlength=vocab_size)
  freq = counts[counts > 0] / counts.sum()
  return float(-np.sum(freq * np.log2(freq)))


def held_out_unigram_entropy_bits(rows, vocab_size: int, max_rows: int = 2000) -> float:
  """The same statistic on (up to max_rows of) the held-out split's real tokens, for comparison."""
  tokens = [row["tokens"][row["token_mask"] > 0] for row in (rows[i] for i in range(min(len(rows), max_rows)))]
  return unigram_entropy_bits(np.concatenate(tokens), vocab_size)


def parse_variants(spec: str) -> list[dict]:
  """"ancestral:100,exact:1,parallel:0.9:dual" -> sampler overrides (config.sampler's nesting), one dict per item:
  name:steps (grid samplers), exact:k (sampler.exact.tokens_per_call) or parallel:threshold
  (sampler.parallel.threshold), each optionally followed by :kv_cache (none, exact, prefix, dual); remdm:steps is
  optionally followed by its strategy (remdm:128:loop, sampler.remdm.strategy)."""
  variants = []
  for item in filter(None, (part.strip() for part in spec.split(","))):
    name, number, *cache = (item + ":").split(":")[:-1] if item.count(":") else (item, "")
    group, key = {"exact": ("exact", "tokens_per_call"), "parallel": ("parallel", "threshold")}.get(name, (None, "steps"))
    try:
      value = float(number) if key == "threshold" else int(number)
    except ValueError:
      value = 0
    if value <= 0 or len(cache) > 1:
      raise UserError(f"eval.samplers item {item!r}: write name:steps (e.g. ancestral:100), exact:k or "
                      "parallel:threshold (e.g. parallel:0.9), optionally then :kv_cache (e.g. parallel:0.9:dual)")
    if name == "remdm":  # its third field is the strategy: remdm:128:loop
      if cache and cache[0] not in remdm.STRATEGIES:
        raise UserError(f"eval.samplers item {item!r}: remdm's third field is its strategy, one of "
                        f"{remdm.STRATEGIES} (e.g. remdm:128:loop)")
      variants.append({"name": name, key: value, **({"remdm": {"strategy": cache[0]}} if cache else {})})
      continue
    variants.append({"name": name, **({group: {key: value}} if group else {key: value}),
                     **({"kv_cache": cache[0]} if cache else {})})
  if not variants:
    raise UserError("eval.samplers is empty: list sampler variants, e.g. --eval.samplers=ancestral:100,exact:1")
  return variants


def variant_label(variant: dict) -> str:
  """A parsed variant as written: "parallel:0.9:dual"."""
  return ":".join(str(item) for value in variant.values()
                  for item in (value.values() if isinstance(value, dict) else (value,)))


class Judge:
  """An autoregressive run restored from its workdir; scores token sequences by their exact NLL."""

  def __init__(self, workdir: str, modality, mesh, current_config):
    """current_config: the evaluating run's, whose values fill keys the judge's config.json predates."""
    path = storage.path(workdir)
    if not (path / "config.json").is_file():
      raise UserError(f"eval.judge={workdir!r} holds no run (no config.json); train one first, e.g. "
                      f"python launch.py --config configs/quickstart_ar.py --workdir {workdir}")
    config = saved_config.as_config(json.loads((path / "config.json").read_text()), current_config)
    objective_name = config.get("objective", "md4")
    if not objectives.get(objective_name).exact:
      raise UserError(f"eval.judge={workdir!r} is an {objective_name} run, whose likelihood is a bound; the judge must "
                      "score exactly (objective='ar')")
    judge_modality = modalities.load(path, config.data.seq_len)
    if not modalities.same_token_ids(judge_modality, modality):  # any length scores
      described = f"{judge_modality.kind}, {judge_modality.vocab_size} ids" if judge_modality else "none saved"
      raise UserError(f"eval.judge={workdir!r} uses another tokenizer ({described}); it must read the same token ids "
                      "as this run")
    self.experiment = Experiment(config, judge_modality, mesh)
    state = restore_state(path / "checkpoints", None, self.experiment.abstract_state,
                         self.experiment.state_summary)
    self.params, self.step, self.workdir = state["ema_params"], int(state["step"]), str(path)
    graphdef, objective = self.experiment.graphdef, self.experiment.objective

    def nll_N(params, tokens_NxL):
      """[N] nats per sequence. An exact objective draws nothing: its terms are the same for any key."""
      net = models.Network(nnx.merge(graphdef, params))
      return objective.terms(net, tokens_NxL, jax.random.key(0), token_mask_BxL=jnp.ones_like(tokens_NxL),
                             timesteps=0)["loss"]

    self._nll_N = jax.jit(nll_N, out_shardings=sharding.replicated(mesh))

  def perplexity(self, tokens_NxL: np.ndarray) -> tuple[float, float | None]:
    """(exp(mean NLL per token), its standard error) of the sequences under the judge. The error treats the
    sequences as independent draws: the standard error of their mean NLL per token, times the perplexity (the
    delta method); None for one sequence."""
    nll_N = np.asarray(self._nll_N(self.params, sharding.replicated_array(np.asarray(tokens_NxL, np.int32),
                                                                          self.experiment.mesh)), np.float64)
    per_token_N = nll_N / tokens_NxL.shape[1]
    perplexity = math.exp(per_token_N.mean())
    if len(per_token_N) < 2:
      return perplexity, None
    return perplexity, perplexity * float(per_token_N.std(ddof=1)) / math.sqrt(len(per_token_N))


def evaluate(base: Experiment, params, key) -> tuple[list[dict], Judge | None]:
  """One row per sampler variant of base's eval.samplers (sampler, NFE, seconds, tokens/s, generative
  perplexity, unigram entropy, a sample), and the judge used (None without eval.judge)."""
  config, modality = base.config, base.modality
  judge = Judge(config.eval.judge, modality, base.mesh, config) if config.eval.judge else None
  rows = []
  for index, overrides in enumerate(parse_variants(config.eval.samplers)):
    experiment = base.with_overrides("sampler", {**overrides, "stop_at_end": False})  # whole samples: every block
    start = generate.unconditional_start(experiment, config.sampler.num_samples)
    samples = generate.draw_samples(experiment, params, jax.random.fold_in(key, index), start)
    label = variant_label(overrides)
    gen_ppl, gen_ppl_stderr = judge.perplexity(samples.tokens) if judge else (None, None)
    rows.append({"sampler": label, "nfe": samples.nfe, "seconds": round(samples.seconds, 3),
                 "tokens_per_sec": round(samples.tokens_per_sec, 1),
                 "gen_ppl": gen_ppl, "gen_ppl_stderr": gen_ppl_stderr,
                 "unigram_entropy_bits": unigram_entropy_bits(samples.tokens, modality.vocab_size),
                 **modality.describe(samples.tokens[0])})
  return rows, judge


def load(config, workdir, modality):
  return pipeline.load_data(config.data, config.eval.split, modality)


def run(context) -> dict:
  """eval/samples_step_N.json and .md."""
  config, experiment, data, step = context.config, context.experiment, context.inputs, context.step
  rows, judge = evaluate(experiment, context.params, context.sample_key)
  data_entropy = held_out_unigram_entropy_bits(data.eval, experiment.vocab_size)
  judge_text = f"judge {judge.workdir} (step {judge.step})" if judge else "no judge (set eval.judge)"
  lines = [f"Step {step}, {config.eval.params} params, {config.sampler.num_samples} samples per sampler; "
           f"{judge_text}. Held-out data's unigram entropy: {data_entropy:.3f} bits.", "",
           "| sampler | network calls | seconds | tokens/s | generative perplexity (+- std error) | "
           "unigram entropy (bits) |",
           "|---|---|---|---|---|---|"]
  for row in rows:
    ppl = f"{row['gen_ppl']:.3f}" if row["gen_ppl"] is not None else "-"
    ppl += f" +- {row['gen_ppl_stderr']:.3f}" if row["gen_ppl_stderr"] is not None else ""
    lines.append(f"| {row['sampler']} | {row['nfe']} | {row['seconds']:.1f} | {row['tokens_per_sec']:.1f} | {ppl} | "
                 f"{row['unigram_entropy_bits']:.3f} |")
  table = "\n".join(lines) + "\n"
  result = {"step": step, "params": config.eval.params, "judge": judge and judge.workdir,
            "held_out_unigram_entropy_bits": data_entropy, "samplers": rows}
  if jax.process_index() == 0:
    output.write_eval_files(context.workdir, config, f"samples_step_{step}", table=table, record=result)
  return result
