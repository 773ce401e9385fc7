"""The held-out likelihood bound: one pass over a split (used in training and by `--mode eval`), and the
`bound` suite: every held-out split, the T-step bounds for eval.bound_steps, tables and records.

Units come from the modality: bits per token (with the perplexity bound) for text, bits per image
dimension for images. `eval/bpt` is the key either way (the workdir contract).
"""

import math

import jax

from md4_jax.data import pipeline
from md4_jax.engine import sharding
from md4_jax.errors import UserError
from md4_jax.evals import output

EVAL_SALT = 1  # fold_in tag: evaluation keys are apart from training keys


def summarize(sums) -> dict:
  """Eval sums over the held-out split -> per-token bound in nats and bits, perplexity, std error."""
  tokens, sequences = sums["num_tokens"], sums["num_sequences"]
  nats = sums["loss_sum"] / tokens
  mean_loss = sums["loss_sum"] / sequences
  variance = max(sums["loss_sq_sum"] / sequences - mean_loss**2, 0.0)
  stderr_nats = math.sqrt(variance * sequences) / tokens
  return {"nats": nats, "bpt": nats / math.log(2), "bpt_stderr": stderr_nats / math.log(2),
          "ppl": math.exp(nats), "diffusion_bpt": sums["diffusion_sum"] / tokens / math.log(2),
          "reconstruction_bpt": sums["reconstruction_sum"] / tokens / math.log(2),
          "prior_bpt": sums["prior_sum"] / tokens / math.log(2), "num_tokens": int(tokens)}


def evaluate(experiment, params, rows, max_sequences: int | None = None) -> dict:
  """The bound over the held-out `rows`, or their first `max_sequences` (default eval.max_sequences; 0 = all).
  Images report no perplexity (it is not a convention there)."""
  cfg = experiment.config
  base = jax.random.fold_in(experiment.base_key, EVAL_SALT)
  totals = {}
  max_sequences = cfg.eval.max_sequences if max_sequences is None else max_sequences
  for index, batch in enumerate(pipeline.eval_batches(rows, cfg.eval.batch_size, max_sequences)):
    sums = experiment.eval_step(params, sharding.global_batch(batch, experiment.mesh), jax.random.fold_in(base, index))
    for key, value in jax.device_get(sums).items():
      totals[key] = totals.get(key, 0.0) + float(value)
  values = summarize(totals)
  if not experiment.modality.shows_perplexity:
    del values["ppl"]
  return values


def load(config, workdir, modality):
  """The run's data (its held-out split eval.split), loaded before any restore so mistakes fail fast."""
  return pipeline.load_data(config.data, config.eval.split, modality)


def run(context) -> dict:
  """--mode eval: the bound over every held-out split; eval/step_N.json and .md, and a metrics.jsonl line.

  Keys: `eval/...` for eval.split (as during training), `eval/<split>/...` for the other splits.
  """
  config, experiment, data, step = context.config, context.experiment, context.inputs, context.step
  params = context.params
  per_split = {}
  for split in pipeline.held_out_splits(config.data.source):
    split_data = data if split == config.eval.split else pipeline.load_data(config.data, split, experiment.modality)
    per_split[split] = evaluate(experiment, params, split_data.eval)
  result = {}
  for split, values in per_split.items():
    prefix = "eval/" if split == config.eval.split else f"eval/{split}/"
    result.update({prefix + key: value for key, value in values.items()})
  timesteps = output.eval_timesteps(config)
  bound = experiment.objective.bound_name(timesteps)
  main = per_split[config.eval.split]
  bound_by_steps = [{"steps": timesteps, "bpt": main["bpt"], "bpt_stderr": main["bpt_stderr"]}]
  if not experiment.objective.exact:  # an exact likelihood has no sampling steps
    for steps in bound_steps(config.eval.bound_steps):
      values = evaluate(experiment.with_overrides("eval", {"timesteps": steps}), params, data.eval)
      bound_by_steps.append({"steps": steps, "bpt": values["bpt"], "bpt_stderr": values["bpt_stderr"]})
  bound_by_steps.sort(key=lambda row: row["steps"] or float("inf"))
  experiment.eval_extras(params, step, context.workdir)  # before the report, which shows them
  if jax.process_index() == 0:
    table = _markdown_table(per_split, step, config.eval.params, bound, config.eval.time_samples, experiment.modality)
    if len(bound_by_steps) > 1:
      table += _steps_table(bound_by_steps, config.eval.split, experiment.modality)
    output.write_eval_files(context.workdir, config, f"step_{step}", table=table, record={
        "step": step, "params": config.eval.params, "bound": bound, "unit": output.unit(experiment.modality),
        "time_samples": config.eval.time_samples, **result, "splits": per_split, "bound_by_steps": bound_by_steps},
        metrics=(step, result))
  return result


def _markdown_table(per_split: dict, step: int, params: str, bound: str, time_samples: int, modality) -> str:
  unit, perplexity = output.unit(modality), modality.shows_perplexity
  what = "dims" if modality.kind == "image" else "tokens"
  lines = [f"Step {step}, {params} params: {bound}, {time_samples} time sample(s) per sequence.", "",
           f"| split | {what} | nats/{modality.unit} | {unit} (+- std error) |" + (" perplexity <= |" if perplexity else ""),
           "|---|---|---|---|" + ("---|" if perplexity else "")]
  for split, v in per_split.items():
    lines.append(f"| {split} | {v['num_tokens']:,} | {v['nats']:.4f} | {v['bpt']:.4f} +- {v['bpt_stderr']:.4f} |"
                 + (f" {v['ppl']:.3f} |" if perplexity else ""))
  return "\n".join(lines) + "\n"


def _steps_table(bound_by_steps: list[dict], split: str, modality) -> str:
  """The bound for each number of sampling steps T (continuous time last: the tightest), on eval.split."""
  unit = output.unit(modality)
  lines = ["", f"The bound with T sampling steps, {split} split (continuous time is the limit T -> infinity):", "",
           f"| T | {unit} (+- std error) |", "|---|---|"]
  for row in bound_by_steps:
    lines.append(f"| {row['steps'] or 'continuous'} | {row['bpt']:.4f} +- {row['bpt_stderr']:.4f} |")
  return "\n".join(lines) + "\n"


def bound_steps(spec: str) -> list[int]:
  """eval.bound_steps "16,64,256" -> [16, 64, 256]."""
  items = [item.strip() for item in spec.split(",") if item.strip()]
  if not all(item.isdigit() and int(item) > 0 for item in items):
    raise UserError(f"eval.bound_steps={spec!r}: write positive step counts separated by commas, e.g. 16,64,256")
  return [int(item) for item in items]
