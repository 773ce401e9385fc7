"""Entry point behind launch.py: modes train | eval | sample over one workdir, and prepare (data only).

Workdir layout (CONTRACT): config.json, tokenizer.json, checkpoints/,
metrics.jsonl, tensorboard/, samples/, eval/.
"""

import json
import math
import pathlib

import jax
import numpy as np
from flax import nnx

from md4_jax import conditioning, config_check, files, loop, report, sample_quality, sharding, zero_shot
from md4_jax.checkpoints import restore_state
from md4_jax.data import benchmarks, pipeline, tokenizers
from md4_jax.errors import UserError
from md4_jax.logging import MetricsLog
from md4_jax.models.transformer import Transformer
from md4_jax.train import Experiment, build_model_config, eval_timesteps

MODES = ("train", "eval", "sample", "prepare", "params")


def main(config, workdir, mode: str = "train", *, reference, step: int | None = None,
         num_samples: int | None = None, prompt: str | None = None, infill: str | None = None,
         seed: int | None = None) -> dict:
  """Validates everything first, then runs `mode`. Returns the eval result (train, eval) or samples.

  prompt / infill / seed condition and seed --mode sample (see md4_jax.conditioning).
  """
  if mode not in MODES:
    raise UserError(f"--mode={mode!r}; choose one of {MODES}")
  given = [name for name, value in (("--prompt", prompt), ("--infill", infill), ("--seed", seed),
                                    ("--num_samples", num_samples)) if value is not None]
  if num_samples is not None and num_samples < 1:
    raise UserError(f"--num_samples={num_samples} must be positive")
  if given and mode != "sample":
    raise UserError(f"{', '.join(given)} only apply to --mode sample" +
                    (" (the training seed is --config.seed)" if "--seed" in given else ""))
  config_check.check_keys(config, reference)
  config_check.check_values(config)
  if mode == "prepare" and config.eval.suite == "zero_shot":
    tokenizer = tokenizers.make_tokenizer(config.data.tokenizer, config.data.tokenizer_path,
                                          alphabet=tokenizers.TEXT8_ALPHABET)
    paths = benchmarks.prepare(benchmarks.parse_names(config.eval.zero_shot), pipeline.data_dir(config.data),
                               tokenizer)
    print("prepared the zero-shot benchmarks: " + ", ".join(str(path) for path in paths))
    return {}
  if mode == "prepare":
    print(f"prepared data.source={config.data.source!r}: {pipeline.prepare(config.data)}")
    return {}
  if mode == "params":
    return _describe(config)
  if not workdir:
    raise UserError(f"--mode {mode} needs --workdir=DIR (the run's directory)")
  workdir = pathlib.Path(workdir).expanduser().absolute()
  _check_workdir(config, workdir, training=mode == "train", reference=reference)
  if mode == "eval" and config.eval.suite == "zero_shot":  # the benchmarks replace the run's own data
    tokenizer = tokenizers.load_tokenizer(workdir / "tokenizer.json")
    benchmark_rows = zero_shot.load_rows(config, tokenizer)
  else:
    data = pipeline.load_data(config.data, config.eval.split, workdir / "tokenizer.json")
    tokenizer = data.tokenizer
  if mode == "sample":  # before the restore, so a bad prompt fails fast
    start_row = conditioning.start_state(data.tokenizer, config.data.seq_len, prompt=prompt, infill=infill)
  if mode == "train":
    if jax.process_index() == 0:
      workdir.mkdir(parents=True, exist_ok=True)
      # Atomic: other processes may read config.json while process 0 writes it.
      files.write_text_atomically(workdir / "config.json", json.dumps(config.to_dict(), indent=2, sort_keys=True))
      tokenizers.save_tokenizer(data.tokenizer, workdir / "tokenizer.json")
    return loop.train(config, workdir, data)
  experiment = Experiment(config, tokenizer.vocab_size, sharding.make_mesh(config.mesh))
  state = restore_state(workdir / "checkpoints", step, experiment.abstract_state)
  restored_step = int(state["step"])
  if mode == "eval" and config.eval.suite == "zero_shot":
    return _evaluate_zero_shot(config, experiment, state, tokenizer, benchmark_rows, workdir, restored_step)
  if mode == "eval" and config.eval.suite == "samples":
    return _evaluate_samples(config, experiment, state, data, workdir, restored_step)
  if mode == "eval":
    return _evaluate(config, experiment, state, data, workdir, restored_step)
  record = {"step": restored_step, "params": config.sampler.params, "seed": config.seed if seed is None else seed,
            "prompt": prompt, "infill": infill}
  start_NxL = np.tile(start_row, (num_samples or config.sampler.num_samples, 1))
  return _sample(experiment, state, data, workdir, start_NxL, record)


def _chosen_params(state, which: str):
  """The EMA ("ema") or raw ("raw") weights of a restored state."""
  return state["ema_params"] if which == "ema" else state["params"]


def _describe(config) -> dict:
  """Parameter count from shapes alone (no data, no compute)."""
  vocab_size = pipeline.nominal_vocab_size(config.data)
  count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(nnx.eval_shape(
      lambda: Transformer(build_model_config(config, vocab_size), nnx.Rngs(0))))))
  print(f"{count:,} parameters ({config.model.num_layers} layers, width {config.model.width}, "
        f"{config.model.num_heads} heads, vocab {vocab_size}, sequence {config.data.seq_len})")
  return {"params": count, "vocab_size": vocab_size}


def _check_workdir(config, workdir: pathlib.Path, training: bool, reference=None) -> None:
  saved = workdir / "config.json"
  if saved.exists():
    try:
      saved_config = json.loads(saved.read_text())
    except json.JSONDecodeError as error:
      raise UserError(f"{saved} is not valid JSON ({error}); restore it or use a new --workdir") from error
    config_check.check_resumable(saved_config, config, workdir, reference)
  elif not training:
    raise UserError(f"{workdir} holds no run (no config.json); train into it first or pass the run's --workdir")
  elif (workdir / "checkpoints").exists():
    raise UserError(f"{workdir} has checkpoints but no config.json, so its config is unknown; use a new --workdir")


def _bound_name(config) -> str:
  """What --mode eval computes: the AR model's exact likelihood, or MD4's continuous / T-step bound."""
  if config.model.kind == "ar":
    return "exact likelihood (autoregressive)"
  timesteps = eval_timesteps(config)
  return "continuous-time negative-ELBO bound" if timesteps == 0 else f"{timesteps}-step negative-ELBO bound"


def _evaluate(config, experiment, state, data, workdir, step) -> dict:
  """--mode eval: the bound over every held-out split; eval/step_N.json and .md, and a metrics.jsonl line.

  `data` holds eval.split; other held-out splits are loaded here.
  Keys: `eval/...` for eval.split (as during training), `eval/<split>/...` for the other splits.
  """
  params = _chosen_params(state, config.eval.params)
  per_split = {}
  for split in pipeline.held_out_splits(config.data.source):
    split_data = data if split == config.eval.split else pipeline.load_data(config.data, split,
                                                                             workdir / "tokenizer.json")
    per_split[split] = loop.evaluate(experiment, params, split_data)
  result = {}
  for split, values in per_split.items():
    prefix = "eval/" if split == config.eval.split else f"eval/{split}/"
    result.update({prefix + key: value for key, value in values.items()})
  timesteps = eval_timesteps(config)
  bound = _bound_name(config)
  main = per_split[config.eval.split]
  bound_by_steps = [{"steps": timesteps, "bpt": main["bpt"], "bpt_stderr": main["bpt_stderr"]}]
  if config.model.kind == "md4":  # the AR likelihood has no steps
    for steps in config_check.bound_steps(config.eval.bound_steps):
      values = loop.evaluate(experiment.with_overrides("eval", {"timesteps": steps}), params, data)
      bound_by_steps.append({"steps": steps, "bpt": values["bpt"], "bpt_stderr": values["bpt_stderr"]})
  bound_by_steps.sort(key=lambda row: row["steps"] or float("inf"))
  if jax.process_index() == 0:
    _write_eval_files(workdir, config, f"step_{step}", table=_markdown_table(
        per_split, step, config.eval.params, bound, config.eval.time_samples), record={
            "step": step, "params": config.eval.params, "bound": bound, "time_samples": config.eval.time_samples,
            **result, "splits": per_split, "bound_by_steps": bound_by_steps}, metrics=(step, result))
  return result


def _evaluate_samples(config, experiment, state, data, workdir, step) -> dict:
  """--mode eval --eval.suite=samples: eval/samples_step_N.json and .md (see md4_jax.sample_quality)."""
  params = _chosen_params(state, config.eval.params)
  key = jax.random.fold_in(jax.random.fold_in(experiment.base_key, loop.SAMPLE_SALT), step)
  rows, judge = sample_quality.evaluate(experiment, params, data, key)
  data_entropy = sample_quality.held_out_unigram_entropy_bits(data.eval, data.tokenizer.vocab_size)
  judge_text = f"judge {judge.workdir} (step {judge.step})" if judge else "no judge (set eval.judge)"
  lines = [f"Step {step}, {config.eval.params} params, {config.sampler.num_samples} samples per sampler; "
           f"{judge_text}. Held-out data's unigram entropy: {data_entropy:.3f} bits.", "",
           "| sampler | network calls | seconds | generative perplexity | unigram entropy (bits) |",
           "|---|---|---|---|---|"]
  for row in rows:
    ppl = f"{row['gen_ppl']:.3f}" if row["gen_ppl"] is not None else "-"
    lines.append(f"| {row['sampler']} | {row['nfe']} | {row['seconds']:.1f} | {ppl} | "
                 f"{row['unigram_entropy_bits']:.3f} |")
  table = "\n".join(lines) + "\n"
  result = {"step": step, "params": config.eval.params, "judge": judge and judge.workdir,
            "held_out_unigram_entropy_bits": data_entropy, "samplers": rows}
  if jax.process_index() == 0:
    _write_eval_files(workdir, config, f"samples_step_{step}", table=table, record=result)
  return result


def _evaluate_zero_shot(config, experiment, state, tokenizer, benchmark_rows, workdir, step) -> dict:
  """--mode eval --eval.suite=zero_shot: eval/zero_shot_step_N.json and .md, a metrics.jsonl line."""
  params = _chosen_params(state, config.eval.params)
  results = zero_shot.evaluate(experiment, params, tokenizer, benchmark_rows)
  exact = config.model.kind == "ar"
  bound = _bound_name(config)
  heading = (f"Zero-shot perplexity, step {step}, {config.eval.params} params: {bound}, "
             f"{config.eval.time_samples} time sample(s) per row, rows of {config.data.seq_len} tokens.\n\n")
  table = heading + zero_shot.table(results, f"{workdir.name} (step {step})", exact)
  result = zero_shot.metrics(results)
  if jax.process_index() == 0:
    _write_eval_files(workdir, config, f"zero_shot_step_{step}", table=table, record={
        "step": step, "params": config.eval.params, "bound": bound, "time_samples": config.eval.time_samples,
        "seq_len": config.data.seq_len, "benchmarks": results}, metrics=(step, result))
  return result


def _write_eval_files(workdir, config, name: str, *, table: str, record: dict, metrics=None) -> None:
  """An eval suite's outputs (process 0): eval/<name>.json and .md, a metrics.jsonl line when `metrics`
  = (step, values) is given, the rewritten eval/report.md; prints the table and what was written."""
  out = workdir / "eval" / name
  out.parent.mkdir(parents=True, exist_ok=True)
  files.write_text_atomically(out.with_name(name + ".json"), json.dumps(record, indent=2))
  files.write_text_atomically(out.with_name(name + ".md"), table)
  written = [f"{out}.json", f"{out}.md"]
  if metrics is not None:
    log = MetricsLog(workdir, resume_step=None)
    log.write(*metrics)
    log.close()
    written.append(f"a line in {workdir / 'metrics.jsonl'}")
  written.append(str(report.write(workdir, config)))
  print(table)
  print(f"wrote {', '.join(written)}")


def _markdown_table(per_split: dict, step: int, params: str, bound: str, time_samples: int) -> str:
  lines = [f"Step {step}, {params} params: {bound}, {time_samples} time sample(s) per sequence.",
           "", "| split | tokens | nats/token | bits/token (+- std error) | perplexity <= |", "|---|---|---|---|---|"]
  for split, v in per_split.items():
    lines.append(f"| {split} | {v['num_tokens']:,} | {v['nats']:.4f} | {v['bpt']:.4f} +- {v['bpt_stderr']:.4f} | "
                 f"{v['ppl']:.3f} |")
  return "\n".join(lines) + "\n"


def _sample(experiment, state, data, workdir, start_NxL, record) -> dict:
  """--mode sample: samples from the restored checkpoint, written to samples/step_N_<sampler>[_k].{txt,jsonl}."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(record["seed"]), loop.SAMPLE_SALT), record["step"])
  stem = _unused_stem(workdir / "samples", f"step_{record['step']}_{experiment.sampler_settings.name}")
  params = _chosen_params(state, record["params"])
  texts, nfe, seconds = loop.write_samples(experiment, params, data.tokenizer, stem, key, start_NxL, record)
  if jax.process_index() == 0:
    for i, text in enumerate(texts):
      print(f"=== sample {i} ===\n{text}\n")
    print(f"{len(texts)} samples from step {record['step']} ({record['params']} params) with sampler "
          f"{experiment.sampler_settings.name}: {nfe} network calls, {seconds:.1f} s; wrote {stem}.txt and .jsonl")
  return {"samples": texts, "path": f"{stem}.txt", "nfe": nfe}


def _unused_stem(directory: pathlib.Path, name: str) -> pathlib.Path:
  """directory/name, or name_2, name_3, ...: earlier samples are never overwritten."""
  stem, index = directory / name, 1
  while stem.with_name(stem.name + ".txt").exists() or stem.with_name(stem.name + ".jsonl").exists():
    index += 1
    stem = directory / f"{name}_{index}"
  return stem
