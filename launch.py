"""Command line: python launch.py --config configs/X.py --workdir DIR [--mode train|eval|sample|prepare|params]
[--config.a.b=v ... (or --a.b=v)] [--prompt TEXT | --infill TEMPLATE [--gap_char C] | --complete top|left|center]
[--class_label N[,N...]] [--num_samples N] [--seed S] [--stop STRING ...] [--sweep [--dry_run] | --sweep_index I] [--coordinator_address H:P --num_processes N --process_id I]."""

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
  config_file, config = command_line.config_argument(argv), None
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


if __name__ == "__main__" and command_line.help_topic(sys.argv[1:]) is not None:
  _help(sys.argv[1:])

from md4_jax.run import allocator  # noqa: E402

allocator.use_huge_pages()  # before jax is imported: restarts this process once with a glibc tunable

from md4_jax.run import platform_check  # noqa: E402

if platform_check.version_problem():  # before flax is imported: a mismatched flax fails deep inside its import
  print(f"error: {platform_check.version_problem()}", file=sys.stderr)
  sys.exit(2)

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from configs import base  # noqa: E402
from md4_jax import errors  # noqa: E402
from md4_jax.errors import UserError  # noqa: E402
from md4_jax.run import distributed, flag_errors, modes, sweeps  # noqa: E402
from md4_jax.storage import paths as storage  # noqa: E402

cli = command_line  # the flags: cli.CONFIG, cli.WORKDIR, ...


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  del argv  # parse_flags refused any left over
  try:
    config = cli.CONFIG.value
    config.to_dict()  # an OSError while loading surfaces here, on first use, not deep inside the run
  except OSError as error:
    failure = flag_errors.config_file_failure(error, flag_errors.config_path(sys.argv))
    print(f"error: {failure or f'cannot load the config file: {error}'}", file=sys.stderr)
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
               gap_char=cli.GAP_CHAR_FLAG.value if flags.FLAGS["gap_char"].present else None,  # given, or the default
               export_format=cli.FORMAT.value, stop=tuple(cli.STOP.value) if cli.STOP.value else None)
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
  sys.argv = flag_errors.expand_shorthand(sys.argv, base.get_config())  # config_flags reads sys.argv itself
  app.run(main, flags_parser=lambda argv: flag_errors.parse_flags(argv, base.get_config()))
