"""launch.py's command line read into a config, and its mistakes as one-line errors (exit status 2): unknown keys
with their group's keys, a renamed key with its new name, a config file's own error with its line, stray
arguments. The rest of a run's failures are UserErrors from the modes.
"""

import os
import sys
import traceback

from absl import flags
from ml_collections.config_flags import config_flags as config_flags_module

from md4_jax import parts
from md4_jax.run import command_line, config_check


def expand_shorthand(argv: list[str], defaults) -> list[str]:
  """`--sampler.steps=100` is short for `--config.sampler.steps=100`; likewise for every group of `defaults`
  (configs/base.py's config)."""
  groups = tuple(f"--{group}." for group, value in defaults.items() if hasattr(value, "items"))
  return [f"--config.{arg[2:]}" if arg.startswith(groups) else arg for arg in argv]


# ml_collections' function that loads a --config file and calls its get_config().
_LOAD_CONFIG_FILE = config_flags_module.ConfigFileFlagParser.parse.__code__


def config_path(argv: list[str]) -> str | None:
  """The --config file named in argv (without a `:ARGS` suffix for get_config), or None."""
  value = command_line.config_argument(argv)
  return value.split(":", 1)[0] or None if value else None


def config_file_failure(error: BaseException, path: str | None) -> str | None:
  """"error in the config file PATH, line N: Type: text" if `error` was raised while PATH loaded or its
  get_config() ran, else None.

  ml_collections re-raises a TypeError / ValueError with the traceback as text, and absl wraps that again, so
  the exception the file raised is found along the chain of causes and contexts.
  """
  if not path:
    return None
  here = os.path.realpath(path)
  inside = False  # whether the chain passed through ml_collections' loading of the file
  seen, last = set(), error
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    last = error
    frames = list(traceback.walk_tb(error.__traceback__))
    inside = inside or any(frame.f_code is _LOAD_CONFIG_FILE for frame, _ in frames)
    if isinstance(error, SyntaxError) and error.filename and os.path.realpath(error.filename) == here:
      return f"error in the config file {path}, line {error.lineno}: {type(error).__name__}: {error.msg}"
    lines = [line for frame, line in frames if os.path.realpath(frame.f_code.co_filename) == here]
    if lines:  # the file's last line on the way to the error: its own, or the call into a library that raised
      return f"error in the config file {path}, line {lines[-1]}: {type(error).__name__}: {error}"
    error = error.__cause__ or error.__context__
  if not inside:
    return None
  if not os.path.isfile(path):
    return f"cannot load the config file: {path} does not exist (--config takes a path, e.g. configs/quickstart.py)"
  # Without a line of the file: e.g. no get_config(), or an open() of a missing file, which ml_collections takes for
  # the config file missing and reports in several lines, the last one the reason.
  return f"error in the config file {path}: {type(last).__name__}: {str(last).strip().splitlines()[-1].strip()}"


def unknown_override(argv: list[str], defaults) -> str | None:
  """The message for the first `--config.KEY[=V]` (or `--noconfig.KEY`) whose KEY configs/base.py lacks, else None.

  Checked before absl parses, whose own message names only the last part of the key and none of its group.
  defaults: configs/base.py's config."""
  known = config_check.flatten(defaults)
  groups = {key.rsplit(".", 1)[0] for key in known}
  for arg in argv:
    name = arg.partition("=")[0]
    for prefix in ("--config.", "--noconfig."):
      key = name[len(prefix):] if name.startswith(prefix) else None
      outside_part = key and key.count(".") >= 2 and key.split(".")[0] in parts.ROOTS and ".".join(
          key.split(".")[:2]) not in groups  # a part outside md4_jax: the config file's plugins hold its group
      if key and key not in known and key not in config_check.RENAMED and not outside_part:
        return config_check.unknown_key(key, known)
  return None


def parse_flags(argv, defaults):
  """absl's parser, with config-override mistakes (unknown key, wrong type) reported in one line. defaults:
  configs/base.py's config."""
  for arg in argv:
    for old_key, (new_key, how) in config_check.RENAMED.items():
      if arg.startswith(f"--config.{old_key}="):
        print(f"error: bad command line: config key {old_key!r} was replaced by {new_key!r}: {how}", file=sys.stderr)
        sys.exit(2)
  unknown = unknown_override(argv, defaults)
  if unknown:
    print(f"error: bad command line: {unknown}", file=sys.stderr)
    sys.exit(2)
  try:
    argv = flags.FLAGS(argv)
  except Exception as error:  # noqa: BLE001 - anything the config file raises while it loads is the user's
    failure = config_file_failure(error, config_path(argv))
    if failure:
      print(f"error: {failure}", file=sys.stderr)
      sys.exit(2)
    if not isinstance(error, (flags.Error, AttributeError, KeyError, TypeError, ValueError)):
      raise
    message = str(error.args[0] if isinstance(error, KeyError) and error.args else error)  # KeyError's str quotes
    message = message.replace("\\'", "'").replace("\\n", "\n").replace("\n", " ")
    if isinstance(error, (AttributeError, KeyError)):
      message = f"unknown config key {message}"
    print(f"error: bad command line: {message}\n(keys and defaults: python launch.py --help=all; usage: --help)",
          file=sys.stderr)
    sys.exit(2)
  if len(argv) > 1:  # absl would print the whole --help for this
    print(f"error: unexpected argument{'s' * (len(argv) > 2)} {', '.join(map(repr, argv[1:]))}; flags look like "
          "--config.train.num_steps=100 (usage: --help)", file=sys.stderr)
    sys.exit(2)
  return argv
