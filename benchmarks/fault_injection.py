"""Kill a tiny training run with SIGKILL at random moments, restart it with the same command each time,
and check it ends bitwise equal to an uninterrupted run. One JSON line.

  python benchmarks/fault_injection.py [--kills 20] [--steps 200] [--max_delay 15] [--seed 0]

The run checkpoints every step (so most of its time is checkpoint writes, and many kills land inside
one), evaluates and writes samples every 20 steps. A kill counts as inside a checkpoint write when an
Orbax temporary directory (`*.orbax-checkpoint-tmp*`) exists right after it. At the end: the final
checkpoint's arrays and metrics.jsonl (wall-clock keys aside) must equal the uninterrupted run's, with
every logged step exactly once. Each start's stderr is kept, and the most lines one showed (besides the
progress bar: warnings of damaged checkpoints moved aside, errors) is reported.
"""

import json
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from tests.conftest import CORPUS  # noqa: E402
from tests.test_end_to_end import metric_rows, saved_state  # noqa: E402
from tests.test_quiet_failures import shown_lines  # noqa: E402

_KILLS = flags.DEFINE_integer("kills", 20, "SIGKILLs to inject.")
_STEPS = flags.DEFINE_integer("steps", 200, "Training steps of the run (enough that every kill lands).")
_MAX_DELAY = flags.DEFINE_float("max_delay", 15.0, "Kill moments are uniform in [0, this] seconds after a start.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")


def command(corpus: pathlib.Path, workdir: pathlib.Path, steps: int) -> list[str]:
  return [sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "tests/tiny_config.py"),
          "--workdir", str(workdir), f"--config.data.path={corpus}", f"--config.train.num_steps={steps}",
          "--config.train.checkpoint_every=1", "--config.train.eval_every=20", "--config.train.log_every=2"]


def run_to_end(cmd: list[str]) -> tuple[float, int]:
  """(seconds, lines it showed on stderr besides the progress bar)."""
  start = time.perf_counter()
  result = subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, text=True)
  return time.perf_counter() - start, len(shown_lines(result.stderr))


def main(argv):
  del argv
  rng = random.Random(_SEED.value)
  root = pathlib.Path(tempfile.mkdtemp(prefix="fault_injection_"))
  corpus = root / "corpus.txt"
  corpus.write_text(CORPUS)
  reference_seconds, _ = run_to_end(command(corpus, root / "reference", _STEPS.value))
  workdir = root / "faulted"
  cmd = command(corpus, workdir, _STEPS.value)
  kills, inside_checkpoint_write, restarts, stderr_lines = 0, 0, 0, []
  while kills < _KILLS.value:
    # stderr to a file, read once the process is gone: a pipe nobody reads could fill and stall the run.
    with tempfile.TemporaryFile("w+") as stderr:
      process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
      restarts += 1
      time.sleep(rng.uniform(0.0, _MAX_DELAY.value))  # start-up included: a kill may land anywhere
      finished = process.poll() is not None  # finished (or failed) before the kill
      if not finished:
        process.send_signal(signal.SIGKILL)
      process.wait()
      stderr.seek(0)
      text = stderr.read()
    stderr_lines.append(len(shown_lines(text)))  # what the user saw of this start, the progress bar aside
    if finished:
      if process.returncode != 0:
        raise RuntimeError(f"restart {restarts} failed: {text[-3000:]}")
      if _STEPS.value in (int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()):
        break  # done: the remaining kills would have nothing to interrupt
      continue
    kills += 1
    inside_checkpoint_write += any((workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
  stderr_lines.append(run_to_end(cmd)[1])  # the same command once more: it finishes the run
  final_a, final_b = saved_state(root / "reference", _STEPS.value), saved_state(workdir, _STEPS.value)
  equal_arrays = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(final_a), jax.tree.leaves(final_b)))
  rows_a, rows_b = metric_rows(root / "reference"), metric_rows(workdir)
  steps_b = [row["step"] for row in rows_b]
  print(json.dumps({
      "benchmark": "fault_injection", "steps": _STEPS.value, "kills": kills,
      "kills_inside_checkpoint_write": inside_checkpoint_write, "starts": restarts + 1,
      "uninterrupted_seconds": round(reference_seconds, 1),
      "final_state_bitwise_equal": equal_arrays, "metrics_equal": rows_a == rows_b,
      "every_logged_step_once": len(steps_b) == len(set((row["step"], tuple(sorted(row))) for row in rows_b)),
      "damaged_checkpoints_moved_aside": len(list((workdir / "checkpoints").glob("*.damaged*"))),
      "most_stderr_lines_of_a_start": max(stderr_lines),  # besides the progress bar
      "workdir": str(root)}))


if __name__ == "__main__":
  app.run(main)
