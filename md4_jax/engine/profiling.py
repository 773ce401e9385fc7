"""`train.profile_steps = "A:B"`: a jax.profiler trace of training steps A+1..B under WORKDIR/profile/, which
TensorBoard's profile plugin and XProf open (`tensorboard --logdir WORKDIR/profile`), and beside it the table of
the top kernels by time per step (engine/trace_table.py): profile/kernels_steps_A_B.md and .json.

The window is rounded out to whole calls (train.steps_per_call): the trace starts before the call that runs step
A+1 and stops once the call that runs step B has finished (its results awaited, so the trace holds its kernels).
Each process traces itself; process 0 writes the table. A bucket workdir's trace is written locally, then copied.
"""

import gzip
import json
import pathlib
import shutil
import tempfile

import jax
from etils import epath

from md4_jax.engine import trace_table
from md4_jax.errors import UserError
from md4_jax.storage import files
from md4_jax.storage import paths as storage

TOP_KERNELS = 25


def parse_window(text: str, num_steps: int) -> tuple[int, int] | None:
  """"A:B" -> (A, B) with 0 <= A < B <= num_steps; "" -> None; anything else a UserError naming the fix."""
  if not text:
    return None
  first, colon, last = text.partition(":")
  try:
    window = (int(first), int(last)) if colon else None
  except ValueError:
    window = None
  if window is None or not 0 <= window[0] < window[1] <= num_steps:
    raise UserError(f"train.profile_steps={text!r}: write 'A:B' to trace the steps after the first A up to step B, "
                    f"with 0 <= A < B <= train.num_steps={num_steps} (e.g. '10:15'; A >= 1 leaves the first "
                    "compile out), or '' for no trace")
  return window


class ProfileWindow:
  """Starts and stops the trace around the loop's calls: `before_call(done)` with the steps done so far, then
  `after_call(done, outputs)` once the call is dispatched."""

  def __init__(self, workdir: epath.Path, text: str, num_steps: int):
    self.window, self.directory = parse_window(text, num_steps), workdir / "profile"
    self.tracing = False
    self.local = None

  def before_call(self, done: int) -> None:
    if self.window and not self.tracing and self.window[0] <= done < self.window[1]:
      self.first, self.tracing = done, True
      self.local = (tempfile.mkdtemp(prefix="md4_jax_profile_") if storage.is_remote(self.directory)
                    else str(self.directory))
      jax.profiler.start_trace(self.local, create_perfetto_trace=True)

  def after_call(self, done: int, outputs) -> None:
    if self.tracing and done >= self.window[1]:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self.tracing = False
      self._write_table(self.first, done)

  def close(self) -> None:
    """A run stopped inside the window (Ctrl-C, an error): the trace so far is written, without a table."""
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False
      self._copy_up()

  def _write_table(self, first: int, last: int) -> None:
    traces = sorted(pathlib.Path(self.local).rglob("perfetto_trace.json.gz"), key=lambda path: path.stat().st_mtime)
    if jax.process_index() == 0 and traces:
      trace = json.loads(gzip.decompress(traces[-1].read_bytes()))
      table = trace_table.kernel_table(trace_table.kernel_events(trace), last - first, TOP_KERNELS)
      title = (f"training steps {first + 1}-{last} on {jax.devices()[0].device_kind} ({jax.default_backend()}), "
               f"jax {jax.__version__}")
      stem = pathlib.Path(self.local) / f"kernels_steps_{first}_{last}"
      files.write_text_atomically(stem.with_suffix(".md"), trace_table.markdown(table, title))
      files.write_text_atomically(stem.with_suffix(".json"), json.dumps({"title": title, **table}, indent=1))
    self._copy_up()

  def _copy_up(self) -> None:
    """A bucket workdir: the local trace and table to WORKDIR/profile/, then the local copy goes."""
    if self.local is None or self.local == str(self.directory):
      return
    files.upload_tree(self.local, self.directory)
    shutil.rmtree(self.local, ignore_errors=True)
