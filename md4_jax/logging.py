"""Metric writers (metrics.jsonl always, TensorBoard events) and the progress bar.

Only process 0 writes. Keys are prefixed `train/` or `eval/` (workdir contract).
"""

import json
import math
import pathlib

import jax
import tqdm
from tensorboardX import SummaryWriter


class MetricsLog:
  """Appends `{"step": N, key: value}` lines to metrics.jsonl and scalars to TensorBoard."""

  def __init__(self, workdir: pathlib.Path, resume_step: int = 0):
    self.active = jax.process_index() == 0
    self.path = workdir / "metrics.jsonl"
    if not self.active:
      return
    if resume_step is not None:
      self._truncate_after(resume_step)
    self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

  def _truncate_after(self, step: int) -> None:
    """A resumed run recomputes the steps after its checkpoint; drop their stale lines."""
    if not self.path.exists():
      return
    lines = self.path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
      self.path.write_text("".join(line + "\n" for line in kept))

  def write(self, step: int, metrics: dict) -> None:
    if not self.active:
      return
    row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    with self.path.open("a") as file:
      file.write(json.dumps(row) + "\n")
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
        self.tensorboard.add_scalar(key, value, step)
    self.tensorboard.flush()

  def close(self) -> None:
    if self.active:
      self.tensorboard.close()


def _plain(value):
  value = getattr(value, "item", lambda: value)()
  return float(value) if isinstance(value, float) else value


def progress_bar(start: int, total: int):
  """Steps/s, ETA and the latest loss (set as postfix); silent on processes other than 0."""
  return tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0,
                   disable=jax.process_index() != 0, desc="train")
