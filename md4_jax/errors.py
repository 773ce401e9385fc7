"""The one exception type that reaches users as a message rather than a traceback, and full-disk detection."""

import errno

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")


class UserError(Exception):
  """A problem with the user's input (config, data, workdir) and how to fix it.

  `launch.py` prints these as one clear message and exits with status 2.
  """


def disk_full(error: BaseException) -> bool:
  """Whether `error`, or an error it was raised from or while handling, says the disk is full.

  Libraries wrap the OSError (Orbax / tensorstore raise their own types whose text carries it),
  so both the errno and the message are checked along the chain.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
      return True
    if any(text in str(error) for text in _DISK_FULL_TEXTS):
      return True
    error = error.__cause__ or error.__context__
  return False
