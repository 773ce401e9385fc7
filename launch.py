"""Command line: python launch.py --config configs/X.py --workdir DIR [--mode train|eval|sample|prepare|params]
[--config.a.b=v ... (or --a.b=v)] [--prompt TEXT | --infill TEMPLATE [--gap_char C] | --complete top|left|center]
[--class_label N[,N...]] [--num_samples N] [--seed S] [--sweep [--dry_run] | --sweep_index I] [--coordinator_address H:P --num_processes N --process_id I]."""

import os
import signal
import sys


def _interrupted(signum, frame):
  """Ctrl-C before training installs its own handler (imports, data loading, the first compile) or in eval and
  sampling: one line, not a KeyboardInterrupt traceback from wherever the interpreter was."""
  del signum, frame
  os.write(2, b"\ninterrupted (Ctrl-C); nothing is lost (a workdir's files are committed whole): run the same "
              b"command to start again, or to resume\n")
  os._exit(130)  # no clean-up that a second Ctrl-C could interrupt; what is committed stays as after SIGKILL


signal.signal(signal.SIGINT, _interrupted)  # first: imports take seconds; the train loop replaces it while it runs

from md4_jax.run import command_line  # noqa: E402 (absl flags and ml_collections only: milliseconds)


def _help(argv: list[str]) -> None:
  """--help[=GROUP]: printed with exit status 0 (2 for a GROUP that names nothing), before jax or the allocator's
  restart (a second or more)."""
  config_file, config = launch_config_path(argv), None
  if config_file:
    import importlib.util  # noqa: PLC0415

    path, _, argument = config_file.partition(":")
    try:
      spec = importlib.util.spec_from_file_location("help_config", path)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      config = module.get_config(argument) if argument else module.get_config()
    except Exception as error:  # noqa: BLE001 - the file's own mistake, named in one line
      print(f"error: cannot load the config file {path}: {type(error).__name__}: {error}", file=sys.stderr)
      sys.exit(2)
  base_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "base.py")  # read, not imported
  sys.exit(command_line.print_help(command_line.help_topic(argv), base_path, config_file, config))


def launch_config_path(argv: list[str]) -> str | None:
  """The --config value in argv (with a `:ARGS` suffix for get_config), or None."""
  for i, arg in enumerate(argv):
    name, equals, value = arg.partition("=")
    if name in ("--config", "-config"):
      return (value if equals else (argv[i + 1] if i + 1 < len(argv) else "")) or None
  return None


if __name__ == "__main__" and command_line.help_topic(sys.argv[1:]) is not None:
  _help(sys.argv[1:])

import traceback  # noqa: E402

from md4_jax.run import allocator  # noqa: E402

allocator.use_huge_pages()  # before jax is imported: restarts this process once with a glibc tunable

from md4_jax.run import platform_check  # noqa: E402

if platform_check.version_problem():  # before flax is imported: a mismatched flax fails deep inside its import
  print(f"error: {platform_check.version_problem()}", file=sys.stderr)
  sys.exit(2)

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from ml_collections.config_flags import config_flags as config_flags_module  # noqa: E402

from configs import base  # noqa: E402
from md4_jax import errors, parts  # noqa: E402
from md4_jax.errors import UserError  # noqa: E402
from md4_jax.run import config_check, distributed, modes, sweeps  # noqa: E402
from md4_jax.storage import paths as storage  # noqa: E402

cli = command_line  # the flags: cli.CONFIG, cli.WORKDIR, ...


# `--sampler.steps=100` is short for `--config.sampler.steps=100`; likewise for every config group.
SHORTHAND_GROUPS = tuple(f"--{group}." for group, value in base.get_config().items() if hasattr(value, "items"))


def expand_shorthand(argv: list[str]) -> list[str]:
  return [f"--config.{arg[2:]}" if arg.startswith(SHORTHAND_GROUPS) else arg for arg in argv]


# ml_collections' function that loads a --config file and calls its get_config().
_LOAD_CONFIG_FILE = config_flags_module.ConfigFileFlagParser.parse.__code__


def config_path(argv: list[str]) -> str | None:
  """The --config file named in argv (without a `:ARGS` suffix for get_config), or None."""
  value = launch_config_path(argv)
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


def unknown_override(argv: list[str]) -> str | None:
  """The message for the first `--config.KEY[=V]` (or `--noconfig.KEY`) whose KEY configs/base.py lacks, else None.

  Checked before absl parses, whose own message names only the last part of the key and none of its group."""
  known = config_check.flatten(base.get_config())
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


def parse_flags(argv):
  """absl's parser, with config-override mistakes (unknown key, wrong type) reported in one line."""
  for arg in argv:
    for old_key, (new_key, how) in config_check.RENAMED.items():
      if arg.startswith(f"--config.{old_key}="):
        print(f"error: bad command line: config key {old_key!r} was replaced by {new_key!r}: {how}", file=sys.stderr)
        sys.exit(2)
  unknown = unknown_override(argv)
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


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  del argv  # parse_flags refused any left over
  try:
    config = cli.CONFIG.value
    config.to_dict()  # an OSError while loading surfaces here, on first use, not deep inside the run
  except OSError as error:
    print(f"error: {config_file_failure(error, config_path(sys.argv)) or f'cannot load the config file: {error}'}",
          file=sys.stderr)
    sys.exit(2)
  try:
    distributed.initialize(cli.COORDINATOR.value, cli.NUM_PROCESSES.value, cli.PROCESS_ID.value)
    runs = [(None, config)]
    if cli.SWEEP.value or cli.SWEEP_INDEX.value is not None:
      runs = sweeps.variants(config_flags.get_config_filename(flags.FLAGS["config"]), config)
      if cli.DRY_RUN.value:
        for index, (name, _) in enumerate(runs):
          print(f"{index}\t{name}")
        return
      if cli.SWEEP_INDEX.value is not None:
        if not 0 <= cli.SWEEP_INDEX.value < len(runs):
          raise UserError(f"--sweep_index={cli.SWEEP_INDEX.value}: the sweep has runs 0..{len(runs) - 1}")
        runs = [runs[cli.SWEEP_INDEX.value]]
    elif cli.DRY_RUN.value:
      raise UserError("--dry_run lists a sweep's runs; use it with --sweep")
    if jax.process_index() == 0:
      print(platform_check.describe_devices(jax), flush=True)
      for warning in (platform_check.untested_jax(), platform_check.unused_accelerator(jax)):
        if warning:
          print(warning, file=sys.stderr, flush=True)
    for name, run_config in runs:
      workdir = cli.WORKDIR.value
      if name is not None:
        if not workdir:
          raise UserError("a sweep needs --workdir=DIR; each run goes to DIR/<name>")
        workdir = str(sweeps.run_directory(workdir, name))
        print(f"=== sweep run {name} in {workdir}")
      modes.main(run_config, workdir, cli.MODE.value, reference=base.get_config(), step=cli.STEP.value,
               num_samples=cli.NUM_SAMPLES.value, prompt=cli.PROMPT.value, infill=cli.INFILL.value, seed=cli.SEED.value,
               class_label=cli.CLASS_LABEL.value, complete=cli.COMPLETE.value, length=cli.LENGTH.value,
               gap_char=cli.GAP_CHAR_FLAG.value if flags.FLAGS["gap_char"].present else None)  # given, or the default
  except UserError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  except Exception as error:
    bucket = storage.unreachable_bucket([cli.WORKDIR.value, config.data.dir, config.data.path])
    if bucket:
      first = (str(error).strip().splitlines() or [""])[0][:200]
      print(f"error: {bucket} stopped answering during the run ({type(error).__name__}: {first}). Checkpoints it "
            "committed before stay restorable: run the same command again once it answers, and the run resumes "
            "from the last one.", file=sys.stderr, flush=True)
      sys.stdout.flush()
      os._exit(2)  # not sys.exit: Orbax's save threads would wait out 300 s signal timeouts for the gone store
    if not errors.disk_full(error):
      raise
    print(f"error: the disk is full ({error}). Free space, or give --workdir / --config.data.dir a disk with room, "
          "then run the same command again: a run resumes from its last complete checkpoint (checkpoints and "
          "prepared data are committed only when whole).", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  sys.argv = expand_shorthand(sys.argv)  # config_flags reads overrides from sys.argv itself
  app.run(main, flags_parser=parse_flags)
