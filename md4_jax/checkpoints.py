"""Orbax checkpoints: the train state plus the loop's JSON state (data iterator, metric window).

Each checkpoint is a composite of two items, `state` (arrays, restored onto
whatever mesh the abstract target names) and `loop` (JSON). Orbax writes to a
temporary directory and renames on commit, so a run killed mid-save leaves
the previous checkpoints intact.
"""

import pathlib

import orbax.checkpoint as ocp

from md4_jax.errors import UserError


class Checkpointer:

  def __init__(self, directory: pathlib.Path, keep: int = 3):
    self.directory = pathlib.Path(directory).absolute()
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, loop_state: dict) -> None:
    """Starts an asynchronous save; `wait()` blocks until it is on disk."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop_state)), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def restore(self, step: int | None, abstract_state):
    """(state, loop_state) of `step` (None: the latest), placed as `abstract_state`'s shardings say."""
    steps = self.all_steps()
    if step is None:
      step = self.latest_step()
    if step is None or step not in steps:
      raise UserError(f"no checkpoint for step {step} in {self.directory} (available: {steps or 'none'}); "
                      "train first, or pass --step with one of the available steps")
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore()))
    except Exception as error:  # orbax raises many types for damaged files; name the checkpoint instead
      others = [s for s in steps if s != step]
      raise UserError(f"checkpoint {self.directory / str(step)} cannot be restored ({type(error).__name__}: "
                      f"{str(error)[:300]}). It is damaged or from an incompatible config; pass --step with "
                      f"another checkpoint ({others or 'none left'}) or move that directory away") from error
    return restored.state, restored.loop

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_state(directory: pathlib.Path, step: int | None, abstract_state):
  """The train state of `step` (None: the latest) in `directory`, for eval, sampling or a judge."""
  checkpointer = Checkpointer(directory)
  try:
    return checkpointer.restore(step, abstract_state)[0]
  finally:
    checkpointer.close()
