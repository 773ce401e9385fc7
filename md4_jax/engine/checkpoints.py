"""Orbax checkpoints: the train state plus the loop's JSON state (data iterator, metric window).

Each checkpoint is a composite of two items, `state` (arrays, restored onto
whatever mesh the abstract target names) and `loop` (JSON). Orbax writes to a
temporary directory and renames on commit, so a run killed mid-save leaves
the previous checkpoints intact (a trainer clears such temporary directories at start).
A checkpoint damaged later (a truncated or missing file, bad metadata) is skipped when
the latest is asked for: the newest that restores is used, the damaged ones are moved
aside to N.damaged, never deleted.
"""

import sys

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from md4_jax.engine import orbax_noise
from md4_jax.errors import UserError
from md4_jax.storage import paths as storage


def state_summary(state) -> dict:
  """{"finite": every float is finite, "checksum": uint32 sum of every array's bits} of a state.

  Jitted by Experiment. A checkpoint is kept as good only if finite; its checksum is saved with it and
  compared after a restore: a flipped bit anywhere changes the sum (by +-2^k mod 2^32, never 0).
  """
  leaves = jax.tree.leaves(state)
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)]))
  checksum = jnp.zeros((), jnp.uint32)
  for x in leaves:
    bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    checksum += jnp.sum(jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32), dtype=jnp.uint32)
  return {"finite": finite, "checksum": checksum}


class Checkpointer:

  def __init__(self, directory: epath.Path, keep: int = 3, training: bool = False, summary=None):
    """training: this process holds the workdir's lock, so leftover temporary directories are stale.
    summary: the jitted `state_summary` (Experiment.state_summary): saved checksums are then checked."""
    orbax_noise.install()  # a failed read or write is reported once, by us, not once per array by Orbax
    self.directory, self.summary = storage.path(directory), summary
    self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=training))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, loop_state: dict) -> None:
    """Starts an asynchronous save; `wait()` blocks until it is on disk. loop_state carries the state's
    "state_checksum" (the loop computes it with its finiteness check)."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop_state)), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def restore(self, step: int | None, abstract_state):
    """(state, loop_state) of `step`, placed as `abstract_state`'s shardings say.

    step None: the newest checkpoint that restores; newer ones that do not are moved aside, with a
    warning. If none restores, nothing is moved (the cause is then more likely the code or config).
    """
    steps = self.all_steps()
    if step is not None:
      if step not in steps:
        raise UserError(f"no checkpoint for step {step} in {self.directory} (available: {steps or 'none'}); "
                        "pass --step with one of the available steps, or none for the latest")
      try:
        return self._restore(step, abstract_state)
      except Exception as error:  # orbax raises many types for damaged files; name the checkpoint instead
        others = [s for s in steps if s != step]
        raise UserError(f"checkpoint {self.directory / str(step)} cannot be restored ({_short(error)}); it is "
                        f"damaged: pass --step with another checkpoint ({others or 'none left'})") from error
    if not steps:
      raise UserError(f"no checkpoint in {self.directory}; train first")
    damaged = {}
    for candidate in reversed(steps):
      try:
        restored = self._restore(candidate, abstract_state)
      except Exception as error:  # noqa: BLE001 (any failure to read a checkpoint means: try an older one)
        damaged[candidate] = error
        continue
      self._move_aside(damaged)
      return restored
    first = max(damaged)
    raise UserError(f"no checkpoint in {self.directory} can be restored (steps {steps}; step {first}: "
                    f"{_short(damaged[first])}); nothing was moved. If their files were damaged (a disk error, a "
                    "copy cut short), restore the directory from a copy; if another version of md4-jax wrote them, "
                    "evaluate or sample with that version; to give them up and train from step 0, move the "
                    f"directory aside (mv {self.directory} {self.directory}.damaged) and run the training command "
                    "again") from damaged[first]

  def _restore(self, step: int, abstract_state):
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore()))
    saved = restored.loop.get("state_checksum")  # absent in checkpoints from before checksums
    if self.summary is not None and saved is not None:
      actual = int(jax.device_get(self.summary(restored.state)["checksum"]))
      if actual != saved:
        raise ValueError(f"the arrays read back have checksum {actual}, not the saved {saved}: a file changed")
    return restored.state, restored.loop

  def _move_aside(self, damaged: dict) -> None:
    """Damaged checkpoints to N.damaged (process 0, once every process is past reading them).

    In a bucket a rename is a copy of every object, then a delete: a kill in between leaves both (the next
    start finds N damaged again and moves it to N.damaged.2); nothing is lost either way."""
    if not damaged:
      return
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("md4_jax: damaged checkpoints read")
    for step, error in sorted(damaged.items()):
      if jax.process_index() == 0:
        target = _unused(self.directory / f"{step}.damaged")
        (self.directory / str(step)).rename(target)
        print(f"warning: checkpoint {self.directory / str(step)} is damaged ({_short(error)}); moved it to "
              f"{target.name} and used an older one", file=sys.stderr, flush=True)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("md4_jax: damaged checkpoints moved")
    self.manager.reload()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _short(error: BaseException) -> str:
  """The first line of an error, cut: TensorStore's messages run to dozens of lines, and Orbax's read errors
  end in "See full TensorStore details: <bound method pybind11_...>" (the repr of a method, not details)."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  text = text.split(" See full TensorStore details")[0]
  return f"{type(error).__name__}: {text[:200]}"


def _unused(path: epath.Path) -> epath.Path:
  """path, or path.2, path.3, ...: an earlier damaged copy is never overwritten."""
  candidate, index = path, 1
  while candidate.exists():
    index += 1
    candidate = path.with_name(f"{path.name}.{index}")
  return candidate


def restore_state(directory: epath.Path, step: int | None, abstract_state, summary=None):
  """The train state of `step` (None: the newest intact) in `directory`, for eval, sampling or a judge."""
  checkpointer = Checkpointer(directory, summary=summary)
  try:
    return checkpointer.restore(step, abstract_state)[0]
  finally:
    checkpointer.close()
