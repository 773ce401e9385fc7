"""Metric writers (metrics.jsonl always, TensorBoard events) and the progress bar.

Only process 0 writes. Keys are prefixed `train/` or `eval/` (workdir contract).

A bucket (gs://) cannot append to an object. There metrics.jsonl is kept whole in memory and the object is
rewritten at every log line (one upload of the whole file; readers see the same one-object layout as
locally), and TensorBoard events are written to a local temporary directory by tensorboardX and the event
file is uploaded to WORKDIR/tensorboard/ after each flush and at close.
"""

import json
import math
import shutil
import tempfile

import jax
import tqdm
from etils import epath
from tensorboardX import SummaryWriter

from md4_jax import storage


class MetricsLog:
  """Appends `{"step": N, key: value}` lines to metrics.jsonl and scalars to TensorBoard."""

  def __init__(self, workdir: epath.Path, resume_step: int = 0):
    self.active = jax.process_index() == 0
    self.path, self.remote = workdir / "metrics.jsonl", storage.is_remote(workdir)
    if not self.active:
      return
    if resume_step is not None:
      self._truncate_after(resume_step)
    self.events = workdir / "tensorboard"
    self.staging = tempfile.mkdtemp(prefix="md4_jax_events_") if self.remote else None
    self.text = self.path.read_text() if self.remote and self.path.exists() else ""
    self.tensorboard = SummaryWriter(self.staging or str(self.events))

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
    if self.remote:
      self.text += json.dumps(row) + "\n"
      self.path.write_text(self.text)
    else:
      with self.path.open("a") as file:
        file.write(json.dumps(row) + "\n")
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
        self.tensorboard.add_scalar(key, value, step)
    self.tensorboard.flush()
    self._upload_events()

  def _upload_events(self) -> None:
    """Bucket runs: the staged event files, whole, to WORKDIR/tensorboard/ (each start writes a new file)."""
    if self.staging is None:
      return
    self.events.mkdir(parents=True, exist_ok=True)
    for staged in epath.Path(self.staging).iterdir():
      (self.events / staged.name).write_bytes(staged.read_bytes())

  def close(self) -> None:
    if self.active:
      self.tensorboard.close()
      self._upload_events()
      if self.staging is not None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _row_of(line: str) -> dict | None:
  """A metrics line's row, or None for a blank or torn line."""
  try:
    row = json.loads(line)
  except ValueError:
    return None
  return row if isinstance(row, dict) and "step" in row else None


def read_rows(path: epath.Path) -> list[dict]:
  """metrics.jsonl's rows in order, skipping a line torn by a full disk or a kill."""
  return [row for row in map(_row_of, path.read_text().splitlines()) if row is not None]


def _plain(value):
  value = getattr(value, "item", lambda: value)()
  return float(value) if isinstance(value, float) else value


def progress_bar(start: int, total: int):
  """Steps/s, ETA and the latest loss (set as postfix); silent on processes other than 0."""
  return tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0,
                   disable=jax.process_index() != 0, desc="train")
