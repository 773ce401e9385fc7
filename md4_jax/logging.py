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
    """A resumed run recomputes the steps after its checkpoint; drop their stale lines, and a line torn
    by a full disk or a kill (it does not parse)."""
    if not self.path.exists():
      return
    lines = self.path.read_text().splitlines()
    kept = [line for line in lines if (row := _row_of(line)) is not None and row["step"] <= step]
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


def _row_of(line: str) -> dict | None:
  """A metrics line's row, or None for a blank or torn line."""
  try:
    row = json.loads(line)
  except ValueError:
    return None
  return row if isinstance(row, dict) and "step" in row else None


def read_rows(path: pathlib.Path) -> list[dict]:
  """metrics.jsonl's rows in order, skipping a line torn by a full disk or a kill."""
  return [row for row in map(_row_of, path.read_text().splitlines()) if row is not None]


def _plain(value):
  value = getattr(value, "item", lambda: value)()
  return float(value) if isinstance(value, float) else value


def progress_bar(start: int, total: int):
  """Steps/s, ETA and the latest loss (set as postfix); silent on processes other than 0."""
  return tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0,
                   disable=jax.process_index() != 0, desc="train")
