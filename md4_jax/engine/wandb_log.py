"""Weights & Biases logging (`wandb.project` set; `pip install -e ".[wandb]"`): the same scalars as
metrics.jsonl, the run's config, and the samples written at each evaluation (image grids, a table of texts).

One W&B run per workdir: its id is drawn when training first logs to W&B and kept in config.json's run record
(`_run.wandb_id`), so a resumed run, and `--mode eval` on the workdir, log to the same W&B run. Scalars are logged
against the metric `step` (W&B's own step counter only orders the calls): a resumed run recomputes the steps
after its checkpoint, and W&B would drop a step below one it has seen. Offline (`wandb.mode='offline'`), the files
go to WORKDIR/wandb/ and `wandb sync WORKDIR/wandb/offline-run-*` uploads them, each start to the same run id.
Only process 0 logs; W&B's own files stay local (a bucket workdir: ./wandb).
"""

import json
import math
import secrets

from etils import epath

from md4_jax.errors import UserError
from md4_jax.storage import paths as storage

MODES = ("online", "offline")
SAMPLE_TEXTS = 32  # rows of the text table logged per evaluation


def check(wandb_config) -> None:
  """wandb.* values, and that wandb is installed when a project is set (before any work)."""
  if wandb_config.mode not in MODES:
    raise UserError(f"wandb.mode={wandb_config.mode!r}; choose one of {MODES}")
  if wandb_config.project:
    try:
      import wandb  # noqa: F401, PLC0415 (an optional extra)
    except ImportError:
      raise UserError(f"wandb.project={wandb_config.project!r} logs to Weights & Biases, which is not installed: "
                      "pip install -e \".[wandb]\" (or leave wandb.project empty)") from None


def new_run_id() -> str:
  return secrets.token_hex(4)  # W&B ids are lowercase letters and digits


class WandbRun:
  """A W&B run of the workdir: `scalars(step, values)`, `samples(step, paths)`, `close()`."""

  def __init__(self, config, workdir: epath.Path, run_id: str):
    import wandb  # noqa: PLC0415 (an optional extra, imported only when asked for)

    self.wandb, cfg = wandb, config.wandb
    local = None if storage.is_remote(workdir) else str(workdir)
    self.run = wandb.init(project=cfg.project, entity=cfg.entity or None, name=cfg.name or workdir.name,
                          id=run_id, mode=cfg.mode, dir=local,
                          **({"resume": "allow"} if cfg.mode == "online" else {}),
                          settings=wandb.Settings(console="off", silent=True))
    self.run.config.update(config.to_dict(), allow_val_change=True)  # a resumed run may have changed keys
    self.run.define_metric("step")
    for group in ("train/*", "eval/*", "samples/*"):
      self.run.define_metric(group, step_metric="step")

  def scalars(self, step: int, values: dict) -> None:
    scalars = {key: value for key, value in values.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
    if scalars:
      self.run.log({"step": step, **scalars})

  def samples(self, step: int, paths) -> None:
    """The evaluation's sample files: PNGs as images, a .jsonl's texts as a table (its first SAMPLE_TEXTS)."""
    logged = {}
    for path in map(epath.Path, paths):
      if path.suffix == ".png":
        logged[f"samples/{'process' if path.stem.endswith('_process') else 'grid'}"] = self.wandb.Image(str(path))
      elif path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()[:SAMPLE_TEXTS]]
        if rows and "text" in rows[0]:
          logged["samples/text"] = self.wandb.Table(columns=["index", "text"],
                                                    data=[[row["index"], row["text"]] for row in rows])
    if logged:
      self.run.log({"step": step, **logged})

  def close(self) -> None:
    self.run.finish()
