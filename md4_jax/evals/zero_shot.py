"""The `zero_shot` suite (`--mode eval --eval.suite=zero_shot`): perplexity on the zero-shot benchmarks, in MD4's table layout.

Each benchmark's token stream (md4_jax/data/zero_shot_sets.py: documents detokenized, each followed
by end-of-text, joined) is cut into rows of data.seq_len; the final partial row is dropped, as in
SEDD's and MD4's tables. Every row is evaluated (eval.max_sequences does not apply), with
eval.time_samples draws of t per row; MD4 runs report the bound (perplexity <=), AR runs the exact
perplexity. End-of-text tokens count as tokens, as in those tables.
"""

import math

import jax

from md4_jax.data import data_dir, read_prepared, zero_shot_sets
from md4_jax.data.rows import StreamRows
from md4_jax.errors import UserError
from md4_jax.evals import bound, output


def load(config, workdir, modality) -> dict:
  """{name: (rows of seq_len tokens, meta)} of eval.zero_shot; fails before any restore if one is missing.
  The run's saved tokenizer tokenizes (not its training data, which need not be here)."""
  del workdir
  if modality.kind != "text":
    raise UserError(f"the zero-shot suite evaluates text benchmarks; this run models {modality.kind}s "
                    "(use --eval.suite=bound or samples)")
  seq_len, rows = config.data.seq_len, {}
  read_prepared(config.data, zero_shot_sets.stream_dir(data_dir(config.data), modality.tokenizer),
                f" --config.eval.suite=zero_shot --config.eval.zero_shot={config.eval.zero_shot}")
  for name in zero_shot_sets.parse_names(config.eval.zero_shot):
    stream, meta = zero_shot_sets.load(name, data_dir(config.data), modality.tokenizer)
    rows[name] = (StreamRows(stream, seq_len), meta)
    if not len(rows[name][0]):
      raise UserError(f"the {meta['column']} benchmark has {len(stream)} tokens, fewer than one row of "
                      f"data.seq_len={seq_len}")
  return rows


def evaluate(experiment, params, rows: dict) -> dict:
  """{name: bound values + documents, rows, dropped_tail_tokens} for each benchmark of `rows`."""
  results = {}
  for name, (benchmark_rows, meta) in rows.items():
    values = bound.evaluate(experiment, params, benchmark_rows, max_sequences=0)
    nats_stderr = values["bpt_stderr"] * math.log(2)  # perplexity's std error: exp's slope times this (delta method)
    results[name] = {**values, "ppl_stderr": values["ppl"] * nats_stderr, "column": meta["column"],
                     "documents": meta["documents"], "rows": len(benchmark_rows),
                     "dropped_tail_tokens": meta["tokens"] - len(benchmark_rows) * benchmark_rows.seq_len}
  return results


def run(context) -> dict:
  """eval/zero_shot_step_N.json and .md, a metrics.jsonl line."""
  config, experiment, step, workdir = context.config, context.experiment, context.step, context.workdir
  results = evaluate(experiment, context.params, context.inputs)
  exact = experiment.objective.exact
  name = experiment.objective.bound_name(output.eval_timesteps(config))
  heading = (f"Zero-shot perplexity, step {step}, {config.eval.params} params: {name}, "
             f"{config.eval.time_samples} time sample(s) per row, rows of {config.data.seq_len} tokens.\n\n")
  table_text = heading + table(results, f"{workdir.name} (step {step})", exact)
  result = metrics(results)
  if jax.process_index() == 0:
    output.write_eval_files(workdir, config, f"zero_shot_step_{step}", table=table_text, record={
        "step": step, "params": config.eval.params, "bound": name, "time_samples": config.eval.time_samples,
        "seq_len": config.data.seq_len, "benchmarks": results}, metrics=(step, result))
  return result


# Published rows of MD4's Table 1 (Shi et al. 2024; GPT-2 = OpenAI's WebText checkpoint, not trained
# on OWT), in benchmark order: lambada, wikitext2, ptb, wikitext103, lm1b. Printed under this run's
# row for orientation; they were computed by other code under the same convention.
PUBLISHED = {
    "GPT-2 small (WebText), published": ("", (45.04, 42.43, 138.43, 41.60, 75.20)),
    "SEDD Absorb small, published": ("≤ ", (50.92, 41.84, 114.24, 40.62, 79.29)),
    "MD4 small, published": ("≤ ", (48.43, 34.94, 102.26, 35.90, 68.10)),
    "MD4 medium, published": ("≤ ", (44.12, 25.84, 66.07, 25.84, 51.45)),
}


def table(results: dict, label: str, exact: bool) -> str:
  """MD4's layout (a column per benchmark, perplexity per cell; published rows below this run's), then
  the details per benchmark."""
  relation = "" if exact else "≤ "
  columns = [results[name]["column"] for name in results]
  order = list(zero_shot_sets.BENCHMARKS)
  published = [f"| {method} | " + " | ".join(f"{sign}{values[order.index(name)]:.2f}" for name in results) + " |"
               for method, (sign, values) in PUBLISHED.items()]
  lines = ["| Method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|",
           f"| {label} | " + " | ".join(f"{relation}{v['ppl']:.2f}" for v in results.values()) + " |",
           *published, "",
           "| benchmark | documents | rows | tokens | dropped tail tokens | nats/token | perplexity (+- std error) |",
           "|---|---|---|---|---|---|---|"]
  for v in results.values():
    lines.append(f"| {v['column']} | {v['documents']:,} | {v['rows']:,} | {v['num_tokens']:,} | "
                 f"{v['dropped_tail_tokens']:,} | {v['nats']:.4f} | "
                 f"{relation}{v['ppl']:.2f} +- {v['ppl_stderr']:.2f} |")
  return "\n".join(lines) + "\n"


def metrics(results: dict) -> dict:
  """metrics.jsonl keys (evaluation lives under eval/): eval/zero_shot/<name>/{ppl,nats,bpt,bpt_stderr,num_tokens}."""
  return {f"eval/zero_shot/{name}/{key}": v[key] for name, v in results.items()
          for key in ("ppl", "nats", "bpt", "bpt_stderr", "num_tokens")}

