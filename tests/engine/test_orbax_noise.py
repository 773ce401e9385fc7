"""The echo filters drop what a failed Orbax write repeats, and nothing else asyncio reports."""

import asyncio
import gc
import logging

import pytest

from md4_jax.engine import orbax_noise

DISK_FULL = ("RESOURCE_EXHAUSTED: Error writing \"params.embed.value/0.0\" in OCDBT database: Failed to write 232129 "
             "bytes to file 6: No space left on device [os_error_code='28']")


def unretrieved_future_logs(error: BaseException, caplog) -> list[str]:
  """What asyncio logs for a future that failed with `error` and was dropped with nobody awaiting it."""
  orbax_noise.install()
  loop = asyncio.new_event_loop()
  try:
    future = loop.create_future()
    future.set_exception(error)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
      del future
      gc.collect()
  finally:
    loop.close()
  return [record.getMessage() for record in caplog.records if "never retrieved" in record.getMessage()]


def test_a_tensorstore_future_that_nobody_awaited_is_dropped(caplog):
  # TensorStore sets the error from C++: it has no Python frames (the CI run of 2026-12-06 printed 25 lines of it).
  assert unretrieved_future_logs(ValueError(DISK_FULL), caplog) == []


@pytest.mark.parametrize("error", [ValueError("the batch has 3 rows"), RuntimeError(DISK_FULL)],
                         ids=["no status code", "not a ValueError"])
def test_other_unretrieved_futures_are_still_logged(caplog, error):
  assert len(unretrieved_future_logs(error, caplog)) == 1


def test_a_raised_error_with_a_status_code_is_still_logged(caplog):
  try:
    raise ValueError(DISK_FULL)  # raised in Python (ours): it has frames, so it is not TensorStore's echo
  except ValueError as raised:
    error = raised
  assert len(unretrieved_future_logs(error, caplog)) == 1
