"""Silences the echoes of a failed Orbax save or restore, which repeat in thousands of lines what the caller
is told once.

When one array of a checkpoint cannot be read (a damaged file) or written (a full disk), Orbax raises the error
to its caller, where `Checkpointer` and `launch.py` turn it into one line. The same failure also comes back,
once per array, from places nobody catches:
- the other read coroutines are garbage collected with their own copy of the error ("Exception ignored in:
  <coroutine object _read_array_index_and_device_put>", each with the whole TensorStore spec);
- TensorStore's reads still in flight finish after Orbax's event loop has closed, and their callbacks fail
  ("RuntimeError: Event loop is closed" from `call_soon_threadsafe`);
- asyncio logs every Orbax task whose exception nobody awaited ("Task exception was never retrieved"), and every
  future TensorStore failed for an awaiter that was already gone ("Future exception was never retrieved": its
  error was set from C++, so it has no Python frames, only TensorStore's status code at the front);
- Orbax logs, with its traceback, each exception it keeps or re-raises for the caller ("_SignalingThread.run()
  raised an exception", "Failed to run ... Handler Commit operations", "Save Finalize thread ... failed").
Each filter below matches one of these by where it was raised (Orbax's own code, or asyncio's closed loop);
anything else, from Orbax included, is printed as before.
"""

import logging
import os
import sys
import traceback

import orbax.checkpoint

_ORBAX = os.path.dirname(orbax.checkpoint.__file__)
# Orbax's messages (with the traceback) for an exception that it also stores or re-raises for the caller, whose
# `save` or `wait_until_finished` then raises it (orbax-checkpoint 0.12.8: future.py, async_checkpointer.py,
# checkpoint_manager.py).
_RERAISED_LATER = ("_SignalingThread.run() raised an exception", "Handler Commit operations or the Commit callback",
                   "[wait_until_finished] Save Finalize thread", "Checkpointer failed: one or more items may not be")
# absl's status codes, which TensorStore puts in front of every error it raises ("RESOURCE_EXHAUSTED: Error writing").
_STATUS_CODES = ("CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                 "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
                 "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
_installed = False


def _from_orbax(error: BaseException | None) -> bool:
  """Whether `error` was raised inside Orbax's code (a frame of its traceback lives in Orbax's package)."""
  frames = traceback.extract_tb(error.__traceback__) if error is not None else []
  return any(frame.filename.startswith(_ORBAX) for frame in frames)


def _from_tensorstore(error: BaseException | None) -> bool:
  """An error TensorStore set on an asyncio future from C++: no Python frames, its status code at the front."""
  return (isinstance(error, ValueError) and error.__traceback__ is None
          and str(error).split(":", 1)[0] in _STATUS_CODES)


def _closed_loop_callback(error: BaseException | None) -> bool:
  """A TensorStore callback that reached an asyncio loop Orbax had already closed."""
  frames = traceback.extract_tb(error.__traceback__) if error is not None else []
  return (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
          and any(frame.name == "call_soon_threadsafe" for frame in frames))


def is_echo(unraisable) -> bool:
  """sys.unraisablehook's argument: an Orbax coroutine's dropped error, or a callback into a closed loop."""
  code = getattr(unraisable.object, "cr_code", None)
  orbax_coroutine = code is not None and code.co_filename.startswith(_ORBAX)
  return orbax_coroutine or _closed_loop_callback(unraisable.exc_value)


class _EchoFilter(logging.Filter):
  """Drops asyncio's "exception was never retrieved" for Orbax's tasks and TensorStore's futures, and Orbax's
  re-raised thread errors."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    message = record.getMessage()
    if record.name == "asyncio" and "exception was never retrieved" in message:
      return not (_from_orbax(error) or _from_tensorstore(error))
    if record.pathname.startswith(_ORBAX) and any(text in message for text in _RERAISED_LATER):
      return False
    return True


def install() -> None:
  """Installs the filters once per process (idempotent); other unraisable errors and log records pass."""
  global _installed
  if _installed:
    return
  _installed = True
  previous = sys.unraisablehook

  def hook(unraisable):
    if not is_echo(unraisable):
      previous(unraisable)

  sys.unraisablehook = hook
  echo_filter = _EchoFilter()
  logging.getLogger("asyncio").addFilter(echo_filter)
  logging.getLogger("absl").addFilter(echo_filter)  # Orbax logs through absl.logging
