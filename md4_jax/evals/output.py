"""What every eval suite writes (process 0): eval/<name>.json and .md, an optional metrics.jsonl line,
the rewritten eval/report.md; and the names of units and bounds the tables use."""

import json

from md4_jax.engine.experiment import eval_timesteps  # noqa: F401 (the suites' one definition of the evaluated bound)
from md4_jax.engine.metrics_log import MetricsLog
from md4_jax.engine.saved_config import RUN_RECORD
from md4_jax.evals import report
from md4_jax.storage import files


def unit(modality) -> str:
  """'bits/token' (text) or 'bits/dim' (images)."""
  return f"bits/{modality.unit}"


def _wandb_id(workdir) -> str | None:
  """The W&B run training logged to (config.json's run record), which an evaluation's metrics line joins."""
  saved = json.loads((workdir / "config.json").read_text())
  return saved.get(RUN_RECORD, {}).get("wandb_id")


def write_eval_files(workdir, config, name: str, *, table: str, record: dict, metrics=None) -> None:
  """An eval suite's outputs: eval/<name>.json and .md, a metrics.jsonl line when `metrics` = (step, values)
  is given, the rewritten eval/report.md; prints the table and what was written."""
  out = workdir / "eval" / name
  out.parent.mkdir(parents=True, exist_ok=True)
  files.write_text_atomically(out.with_name(name + ".json"), json.dumps(record, indent=2))
  files.write_text_atomically(out.with_name(name + ".md"), table)
  written = [f"{out}.json", f"{out}.md"]
  if metrics is not None:
    log = MetricsLog(workdir, resume_step=None, config=config,
                     wandb_id=_wandb_id(workdir) if config.wandb.project else None)
    log.write(*metrics)
    log.close()
    written.append(f"a line in {workdir / 'metrics.jsonl'}")
  written.append(str(report.write(workdir, config)))
  print(table)
  print(f"wrote {', '.join(written)}")
