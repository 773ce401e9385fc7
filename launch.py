"""Command line: python launch.py --config configs/X.py --workdir DIR [--mode train|eval|sample|prepare] [--config.a.b=v]."""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from configs import base
from md4_jax import run
from md4_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config.json, checkpoints/, metrics.jsonl, "
                               "samples/ (all modes but prepare).")
_MODE = flags.DEFINE_enum("mode", "train", run.MODES, "train (resumes if DIR has checkpoints), eval, sample, prepare (download and "
                            "preprocess data.source into data.dir), or params (print the parameter count).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step for eval/sample (default: the latest).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Samples to write in --mode sample.")
flags.mark_flags_as_required(["config"])


def parse_flags(argv):
  """absl's parser, with config-override mistakes (unknown key, wrong type) reported in one line."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
    message = str(error).strip("'\"").replace("\\'", "'").replace("\\n", "\n")
    if "Traceback (most recent call last)" in message:  # an exception inside the config file: keep its last line
      message = f"{message.split(':')[0]}: error in the config file: {message.strip().splitlines()[-1].strip()}"
    message = message.replace("\n", " ")
    if isinstance(error, (AttributeError, KeyError)):
      message = f"unknown config key {message}"
    print(f"error: bad command line: {message}\n(keys and defaults: configs/base.py; usage: --help)",
          file=sys.stderr)
    sys.exit(2)


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags look like --config.train.num_steps=100")
  try:
    config = _CONFIG.value
    config.to_dict()  # the file is loaded lazily; fail here, not deep inside the run
  except OSError as error:
    print(f"error: cannot load the config file: {error}", file=sys.stderr)
    sys.exit(2)
  try:
    run.main(config, _WORKDIR.value, _MODE.value, reference=base.get_config(), step=_STEP.value,
             num_samples=_NUM_SAMPLES.value)
  except UserError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
