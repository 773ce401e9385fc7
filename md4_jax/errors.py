"""The one exception type that reaches users as a message rather than a traceback."""


class UserError(Exception):
  """A problem with the user's input (config, data, workdir) and how to fix it.

  `launch.py` prints these as one clear message and exits with status 2.
  """
