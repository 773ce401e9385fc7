"""Metric writers (metrics.jsonl always, TensorBoard events) and the progress bar.

Only process 0 writes. Keys are prefixed `train/` or `eval/` (workdir contract).

A bucket (gs://) cannot append to an object. There metrics.jsonl is kept whole in memory and the object is
rewritten at every log line (one upload of the whole file; readers see the same one-object layout as
locally), and TensorBoard events are written to a local temporary directory and the event file is uploaded to
WORKDIR/tensorboard/ after each log line and at close.
"""

import json
import math
import os
import shutil
import socket
import struct
import tempfile
import time

import jax
import numpy as np
import tqdm
from etils import epath
from jax.experimental import multihost_utils
from tensorboardX import summary
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from md4_jax.engine import wandb_log
from md4_jax.storage import files
from md4_jax.storage import paths as storage


class EventFile:
  """A TensorBoard event file, each log line's events appended in one write (tensorboardX's protos and checksum,
  TensorBoard's record framing). tensorboardX's own writer buffers in a thread and flushes again at exit: on a
  full disk that printed two tracebacks after the run's one-line error. Here the write at hand fails, once."""

  def __init__(self, directory: str):
    self.path = os.path.join(directory, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}")
    self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    self.write([event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")])

  def scalars(self, step: int, values: dict) -> None:
    self.write([event_pb2.Event(wall_time=time.time(), step=step, summary=summary.scalar(key, value))
                for key, value in values.items()])

  def write(self, events: list) -> None:
    data = b"".join(_record(event.SerializeToString()) for event in events)
    while data:
      data = data[os.write(self.fd, data):]

  def close(self) -> None:
    os.close(self.fd)


def _record(data: bytes) -> bytes:
  """One record: length, its masked CRC-32C, the data, its masked CRC-32C (what TensorBoard's reader checks)."""
  header = struct.pack("<Q", len(data))
  return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


class MetricsLog:
  """Appends `{"step": N, key: value}` lines to metrics.jsonl and scalars to TensorBoard (and to Weights & Biases
  when the config names a project and the workdir's run record holds its run id: engine/wandb_log.py)."""

  def __init__(self, workdir: epath.Path, resume_step: int = 0, config=None, wandb_id: str | None = None):
    self.active = jax.process_index() == 0
    self.path, self.remote = workdir / "metrics.jsonl", storage.is_remote(workdir)
    self.wandb = None
    if not self.active:
      return
    if config is not None and config.wandb.project and wandb_id:
      self.wandb = wandb_log.WandbRun(config, workdir, wandb_id)
    if resume_step is not None:
      self._truncate_after(resume_step)
    self.events = workdir / "tensorboard"
    self.staging = tempfile.mkdtemp(prefix="md4_jax_events_") if self.remote else None
    self.text = self.path.read_text() if self.remote and self.path.exists() else ""
    if not self.remote:
      self.events.mkdir(parents=True, exist_ok=True)
    self.tensorboard = EventFile(self.staging or str(self.events))

  def _truncate_after(self, step: int) -> None:
    """A resumed run recomputes the steps after its checkpoint; drop their stale lines, and a line torn
    by a full disk or a kill (it does not parse)."""
    if not self.path.exists():
      return
    lines = self.path.read_text().splitlines()
    kept = [line for line in lines if (row := _row_of(line)) is not None and row["step"] <= step]
    if len(kept) != len(lines):
      self.path.write_text("".join(line + "\n" for line in kept))

  def has(self, step: int, key: str) -> bool:
    """Whether metrics.jsonl has `key` at `step`; the same answer on every process (process 0 reads the file)."""
    found = self.active and self.path.exists() and any(
        row["step"] == step and key in row for row in read_rows(self.path))
    if jax.process_count() > 1:
      found = bool(multihost_utils.broadcast_one_to_all(np.asarray(found)))
    return bool(found)

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
    scalars = {key: value for key, value in row.items()
               if key != "step" and isinstance(value, (int, float)) and math.isfinite(value)}
    self.tensorboard.scalars(step, scalars)
    self._upload_events()
    if self.wandb:
      self.wandb.scalars(step, scalars)

  def samples(self, step: int, paths) -> None:
    """An evaluation's sample files (W&B shows them; metrics.jsonl and TensorBoard hold scalars only)."""
    if self.active and self.wandb:
      self.wandb.samples(step, paths)

  def _upload_events(self) -> None:
    """Bucket runs: the staged event files, whole, to WORKDIR/tensorboard/ (each start writes a new file)."""
    if self.staging is None:
      return
    files.upload_tree(self.staging, self.events)

  def close(self) -> None:
    if self.active:
      if self.wandb:
        self.wandb.close()
      self.tensorboard.close()
      self._upload_events()
      if self.staging is not None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _row_of(line: str) -> dict | None:
  """A metrics line's row, or None for a blank or torn line, or one whose "step" is not a whole number (an edit
  by hand: `{"step": "abc"}`, `{"step": null}`)."""
  try:
    row = json.loads(line)
  except ValueError:
    return None
  step = row.get("step") if isinstance(row, dict) else None
  return row if isinstance(step, int) and not isinstance(step, bool) else None


def read_rows(path: epath.Path) -> list[dict]:
  """metrics.jsonl's rows in order, skipping a line torn by a full disk or a kill."""
  return [row for row in map(_row_of, path.read_text().splitlines()) if row is not None]


def _plain(value):
  value = getattr(value, "item", lambda: value)()
  return float(value) if isinstance(value, float) else value


class ProgressBar:
  """Steps/s, ETA and the latest loss; silent on processes other than 0.

  Its label says what the run is doing when it is not stepping: "compiling" until the first call returns,
  "evaluating" during an evaluation. Time spent in those phases is left out of the rate and the ETA (tqdm's
  smoothed rate measures the steps between two refreshes; a pause moves the last refresh's time on), while the
  elapsed time stays the wall time since the bar started (moving tqdm's start instead ran it backwards).
  """

  def __init__(self, start: int, total: int, quiet: bool = False):
    """quiet: shows nothing (a run with no steps left)."""
    self.bar = tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0,
                         disable=quiet or jax.process_index() != 0, desc="compiling")
    self.paused_at = time.perf_counter()

  def pause(self, phase: str) -> None:
    """Shows `phase` ("evaluating") until `resume()`; the time in between does not count as stepping."""
    self.paused_at = time.perf_counter()
    self.bar.set_description(phase)  # refreshes the line now

  def resume(self) -> None:
    """Back to "train"; the pause's seconds are taken out of the interval tqdm's rate is measured over."""
    if self.paused_at is None or self.bar.disable:  # a disabled bar (processes other than 0) has no clocks
      self.paused_at = None
      return
    paused = time.perf_counter() - self.paused_at
    self.paused_at = None
    self.bar.last_print_t += paused
    self.bar.set_description("train", refresh=False)

  def step(self, count: int, loss: float, bits: float) -> None:
    """`count` more steps done, the last with this loss."""
    self.bar.set_postfix(loss=f"{loss:.4f}", bits=f"{bits:.3f}", refresh=False)
    self.bar.update(count)

  def close(self) -> None:
    self.resume()  # the last line says "train", not the final evaluation's label
    self.bar.close()
